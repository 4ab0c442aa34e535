;; jaccard(a Utf8, b Utf8) -> Float64: the Jaccard similarity |A ∩ B| / |A ∪ B| of two
;; comma-separated sets (`"d1,d2"`); empty items are ignored, duplicates count once.
;; Null when either argument is null or both sets are empty.
;; The fraud example compares the devices of a customer's recent transactions with the
;; devices of their earlier ones: a taken-over account shows new devices.
(module
  (@custom "quiver.udf.v1" "{\"functions\":[{\"name\":\"jaccard\",\"args\":[\"Utf8\",\"Utf8\"],\"returns\":\"Float64\",\"deterministic\":true,\"description\":\"Jaccard similarity of two comma-separated sets\"}]}")
  ;; @prelude
  ;; [a, a+n) == [b, b+n)
  (func $eq (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $no
      (loop $l
        (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
        (br_if $no (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $l)))
    (i32.const 0))
  ;; The list [p, p+n) holds the item [t, t+m) (m > 0).
  (func $has (param $p i32) (param $n i32) (param $t i32) (param $m i32) (result i32)
    (local $end i32) (local $s i32) (local $i i32)
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (local.set $s (local.get $p))
    (local.set $i (local.get $p))
    (loop $l
      (if (i32.eq (local.get $i) (local.get $end))
        (then
          (return (i32.and (i32.eq (i32.sub (local.get $i) (local.get $s)) (local.get $m))
                           (call $eq (local.get $s) (local.get $t) (local.get $m))))))
      (if (i32.eq (i32.load8_u (local.get $i)) (i32.const 44))
        (then
          (if (i32.eq (i32.sub (local.get $i) (local.get $s)) (local.get $m))
            (then (if (call $eq (local.get $s) (local.get $t) (local.get $m)) (then (return (i32.const 1))))))
          (local.set $s (i32.add (local.get $i) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l))
    (i32.const 0))
  ;; Distinct items of list a, and how many of them list b holds.
  (func $count (param $a i32) (param $an i32) (param $b i32) (param $bn i32) (result i32 i32)
    (local $end i32) (local $s i32) (local $i i32) (local $m i32) (local $d i32) (local $c i32)
    (local.set $end (i32.add (local.get $a) (local.get $an)))
    (local.set $s (local.get $a))
    (local.set $i (local.get $a))
    (block $done
      (loop $l
        (if (i32.or (i32.eq (local.get $i) (local.get $end))
                    (if (result i32) (i32.lt_u (local.get $i) (local.get $end))
                      (then (i32.eq (i32.load8_u (local.get $i)) (i32.const 44)))
                      (else (i32.const 0))))
          (then
            (local.set $m (i32.sub (local.get $i) (local.get $s)))
            (if (i32.and (i32.ne (local.get $m) (i32.const 0))
                         (i32.eqz (call $has (local.get $a) (i32.sub (local.get $s) (local.get $a)) (local.get $s) (local.get $m))))
              (then
                (local.set $d (i32.add (local.get $d) (i32.const 1)))
                (if (call $has (local.get $b) (local.get $bn) (local.get $s) (local.get $m))
                  (then (local.set $c (i32.add (local.get $c) (i32.const 1)))))))
            (br_if $done (i32.eq (local.get $i) (local.get $end)))
            (local.set $s (i32.add (local.get $i) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
    (local.get $d) (local.get $c))
  (func (export "jaccard") (param $p i32) (param $len i32) (result i64)
    (local $n i32) (local $r i32)
    (local $a i32) (local $an i32) (local $b i32) (local $bn i32)
    (local $da i32) (local $common i32) (local $db i32) (local $union i32)
    (if (i32.eqz (call $read (local.get $p) (local.get $len))) (then (return (call $fail_no_batch))))
    (local.set $n (global.get $rows))
    (drop (call $out_begin (local.get $n)))
    (block $done
      (loop $row
        (br_if $done (i32.ge_u (local.get $r) (local.get $n)))
        (if (i32.and (call $valid (i32.const 0) (local.get $r)) (call $valid (i32.const 3) (local.get $r)))
          (then
            (call $str (i32.const 0) (local.get $r)) (local.set $an) (local.set $a)
            (call $str (i32.const 3) (local.get $r)) (local.set $bn) (local.set $b)
            (call $count (local.get $a) (local.get $an) (local.get $b) (local.get $bn))
            (local.set $common) (local.set $da)
            (call $count (local.get $b) (local.get $bn) (local.get $a) (local.get $an))
            (drop) (local.set $db)
            (local.set $union (i32.sub (i32.add (local.get $da) (local.get $db)) (local.get $common)))
            (if (local.get $union)
              (then (call $out_set (local.get $r)
                      (f64.div (f64.convert_i32_u (local.get $common)) (f64.convert_i32_u (local.get $union)))))
              (else (call $out_null (local.get $r)))))
          (else (call $out_null (local.get $r))))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $row)))
    (call $out_finish)))
