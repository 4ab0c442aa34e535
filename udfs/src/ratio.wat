;; ratio(a Float64, b Float64) -> Float64: a / (b + 1); null when either is null.
;; The benchmark's UDF: the same logic as the SQL expression `a / (b + 1.0)`.
(module
  (@custom "quiver.udf.v1" "{\"functions\":[{\"name\":\"ratio\",\"args\":[\"Float64\",\"Float64\"],\"returns\":\"Float64\",\"deterministic\":true,\"description\":\"a / (b + 1)\"}]}")
  ;; @prelude
  (func (export "ratio") (param $p i32) (param $len i32) (result i64)
    (local $n i32) (local $a i32) (local $b i32) (local $o i32) (local $end i32)
    (if (i32.eqz (call $read (local.get $p) (local.get $len))) (then (return (call $fail_no_batch))))
    (local.set $n (global.get $rows))
    (local.set $a (call $buf (i32.const 1)))
    (local.set $b (call $buf (i32.const 3)))
    (local.set $o (call $out_begin (local.get $n)))
    (local.set $end (i32.add (local.get $o) (i32.shl (local.get $n) (i32.const 3))))
    ;; Every row, nulls included (their values are ignored): a tight loop.
    (block $done
      (loop $row
        (br_if $done (i32.ge_u (local.get $o) (local.get $end)))
        (f64.store (local.get $o)
          (f64.div (f64.load (local.get $a)) (f64.add (f64.load (local.get $b)) (f64.const 1))))
        (local.set $o (i32.add (local.get $o) (i32.const 8)))
        (local.set $a (i32.add (local.get $a) (i32.const 8)))
        (local.set $b (i32.add (local.get $b) (i32.const 8)))
        (br $row)))
    ;; Null where either argument is.
    (call $out_valid_and (i32.const 0) (i32.const 2))
    (call $out_finish)))
