;; ratio(a Float64, b Float64) -> Float64: a / (b + 1); null when either is null.
;; The benchmark's UDF: the same logic as the SQL expression `a / (b + 1.0)`.
(module
  (@custom "quiver.udf.v1" "{\"functions\":[{\"name\":\"ratio\",\"args\":[\"Float64\",\"Float64\"],\"returns\":\"Float64\",\"deterministic\":true,\"description\":\"a / (b + 1)\"}]}")
  ;; @prelude
  (func (export "ratio") (param $p i32) (param $len i32) (result i64)
    (local $n i32) (local $r i32)
    (if (i32.eqz (call $read (local.get $p) (local.get $len))) (then (return (call $fail_no_batch))))
    (local.set $n (global.get $rows))
    (drop (call $out_begin (local.get $n)))
    (local.set $r (i32.const 0))
    (block $done
      (loop $row
        (br_if $done (i32.ge_u (local.get $r) (local.get $n)))
        (if (i32.and (call $valid (i32.const 0) (local.get $r)) (call $valid (i32.const 2) (local.get $r)))
          (then
            (call $out_set (local.get $r)
              (f64.div (call $f64 (i32.const 0) (local.get $r))
                       (f64.add (call $f64 (i32.const 2) (local.get $r)) (f64.const 1)))))
          (else (call $out_null (local.get $r))))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $row)))
    (call $out_finish)))
