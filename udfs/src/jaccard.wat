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
  ;; The table of k items (address, length) at tab holds the item [t, t+m).
  (func $in_tab (param $tab i32) (param $k i32) (param $t i32) (param $m i32) (result i32)
    (local $e i32)
    (local.set $e (i32.add (local.get $tab) (i32.shl (local.get $k) (i32.const 3))))
    (block $no
      (loop $l
        (br_if $no (i32.ge_u (local.get $tab) (local.get $e)))
        (if (i32.eq (i32.load offset=4 (local.get $tab)) (local.get $m))
          (then (if (call $eq (i32.load (local.get $tab)) (local.get $t) (local.get $m))
            (then (return (i32.const 1))))))
        (local.set $tab (i32.add (local.get $tab) (i32.const 8)))
        (br $l)))
    (i32.const 0))
  ;; Write the distinct non-empty items of the list [p, p+n) to the table at tab as
  ;; (address, length) pairs; their number. Linear in the items times the distinct ones.
  (func $distinct (param $p i32) (param $n i32) (param $tab i32) (result i32)
    (local $end i32) (local $s i32) (local $i i32) (local $m i32) (local $k i32)
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (local.set $s (local.get $p))
    (local.set $i (local.get $p))
    (block $done
      (loop $l
        (if (i32.or (i32.eq (local.get $i) (local.get $end))
                    (if (result i32) (i32.lt_u (local.get $i) (local.get $end))
                      (then (i32.eq (i32.load8_u (local.get $i)) (i32.const 44)))
                      (else (i32.const 0))))
          (then
            (local.set $m (i32.sub (local.get $i) (local.get $s)))
            (if (i32.and (i32.ne (local.get $m) (i32.const 0))
                         (i32.eqz (call $in_tab (local.get $tab) (local.get $k) (local.get $s) (local.get $m))))
              (then
                (i32.store (i32.add (local.get $tab) (i32.shl (local.get $k) (i32.const 3))) (local.get $s))
                (i32.store offset=4 (i32.add (local.get $tab) (i32.shl (local.get $k) (i32.const 3))) (local.get $m))
                (local.set $k (i32.add (local.get $k) (i32.const 1)))))
            (br_if $done (i32.eq (local.get $i) (local.get $end)))
            (local.set $s (i32.add (local.get $i) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
    (local.get $k))
  (func (export "jaccard") (param $p i32) (param $len i32) (result i64)
    (local $n i32) (local $r i32)
    (local $a i32) (local $an i32) (local $b i32) (local $bn i32)
    (local $ta i32) (local $tb i32) (local $da i32) (local $db i32) (local $common i32) (local $j i32)
    (if (i32.eqz (call $read (local.get $p) (local.get $len))) (then (return (call $fail_no_batch))))
    (local.set $n (global.get $rows))
    ;; Item tables, large enough for any row: a row has at most as many items as its
    ;; column has bytes, plus one.
    (local.set $ta (call $alloc (i32.shl (i32.add (call $buf_len (i32.const 2)) (i32.const 1)) (i32.const 3))))
    (local.set $tb (call $alloc (i32.shl (i32.add (call $buf_len (i32.const 5)) (i32.const 1)) (i32.const 3))))
    (if (i32.or (i32.eqz (local.get $ta)) (i32.eqz (local.get $tb))) (then unreachable))
    (drop (call $out_begin (local.get $n)))
    (block $done
      (loop $row
        (br_if $done (i32.ge_u (local.get $r) (local.get $n)))
        (if (i32.and (call $valid (i32.const 0) (local.get $r)) (call $valid (i32.const 3) (local.get $r)))
          (then
            (call $str (i32.const 0) (local.get $r)) (local.set $an) (local.set $a)
            (call $str (i32.const 3) (local.get $r)) (local.set $bn) (local.set $b)
            (local.set $da (call $distinct (local.get $a) (local.get $an) (local.get $ta)))
            (local.set $db (call $distinct (local.get $b) (local.get $bn) (local.get $tb)))
            (local.set $common (i32.const 0))
            (local.set $j (i32.const 0))
            (block $end
              (loop $each
                (br_if $end (i32.ge_u (local.get $j) (local.get $da)))
                (if (call $in_tab (local.get $tb) (local.get $db)
                      (i32.load (i32.add (local.get $ta) (i32.shl (local.get $j) (i32.const 3))))
                      (i32.load offset=4 (i32.add (local.get $ta) (i32.shl (local.get $j) (i32.const 3)))))
                  (then (local.set $common (i32.add (local.get $common) (i32.const 1)))))
                (local.set $j (i32.add (local.get $j) (i32.const 1)))
                (br $each)))
            (if (i32.add (local.get $da) (local.get $db))
              (then (call $out_set (local.get $r)
                      (f64.div (f64.convert_i32_u (local.get $common))
                               (f64.convert_i32_u (i32.sub (i32.add (local.get $da) (local.get $db)) (local.get $common))))))
              (else (call $out_null (local.get $r)))))
          (else (call $out_null (local.get $r))))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $row)))
    (call $out_finish)))
