  ;; ---- quiver UDF ABI v1 prelude (udfs/src/prelude.wat; see docs/udf-abi.md) ----
  ;; Memory: 0..16 zero, 16..128 the output Schema message (one nullable Float64
  ;; column `out`), 128..280 the output RecordBatch message template, heap from 1024.
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 1024))
  (data (i32.const 16) "\ff\ff\ff\ff\68\00\00\00\10\00\00\00\0a\00\0c\00\04\00\06\00\08\00\00\00\0c\00\00\00\04\00\01\00\0c\00\00\00\08\00\08\00\00\00\04\00\08\00\00\00\04\00\00\00\01\00\00\00\10\00\00\00\0c\00\10\00\04\00\0c\00\0d\00\08\00\0c\00\00\00\1c\00\00\00\10\00\00\00\01\03\00\00\06\00\08\00\04\00\00\00\08\00\00\00\02\00\00\00\03\00\00\00\6f\75\74\00")
  (data (i32.const 128) "\ff\ff\ff\ff\90\00\00\00\10\00\00\00\0c\00\18\00\04\00\06\00\08\00\10\00\0c\00\00\00\04\00\03\00\20\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\0a\00\18\00\08\00\04\00\10\00\00\00\00\00\00\00\10\00\00\00\18\00\00\00\00\00\00\00\00\00\00\00\24\00\00\00\00\00\00\00\00\00\00\00\01\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\02\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00\00")

  (func (export "quiver_abi_version") (result i32) (i32.const 1))

  ;; Bump allocator: 8-byte aligned; grows memory; 0 when it cannot.
  (func $alloc (export "alloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (if (i32.lt_u (local.get $end) (local.get $p)) (then (return (i32.const 0))))
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535)) (i32.const 16)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))
  (func (export "dealloc") (param i32 i32))

  ;; ---- reading the input: an IPC stream (Schema message, one RecordBatch) ----
  (global $rows (mut i32) (i32.const 0))
  (global $bufs (mut i32) (i32.const 0))
  (global $body (mut i32) (i32.const 0))

  ;; Address of field k of the flatbuffer table at t, or 0 when absent.
  (func $fb_field (param $t i32) (param $k i32) (result i32)
    (local $vt i32) (local $slot i32) (local $o i32)
    (local.set $vt (i32.sub (local.get $t) (i32.load (local.get $t))))
    (local.set $slot (i32.add (i32.const 4) (i32.shl (local.get $k) (i32.const 1))))
    (if (i32.ge_u (local.get $slot) (i32.load16_u (local.get $vt))) (then (return (i32.const 0))))
    (local.set $o (i32.load16_u (i32.add (local.get $vt) (local.get $slot))))
    (if (result i32) (local.get $o)
      (then (i32.add (local.get $t) (local.get $o)))
      (else (i32.const 0))))
  (func $fb_deref (param $p i32) (result i32)
    (i32.add (local.get $p) (i32.load (local.get $p))))

  ;; Find the record batch in the stream [p, p+len): 1 when found.
  (func $read (param $p i32) (param $len i32) (result i32)
    (local $end i32) (local $meta i32) (local $fb i32) (local $msg i32) (local $hdr i32) (local $bl i32) (local $f i32)
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (block $done
      (loop $next
        (br_if $done (i32.gt_u (i32.add (local.get $p) (i32.const 8)) (local.get $end)))
        (local.set $meta (i32.load offset=4 (local.get $p)))
        (br_if $done (i32.eqz (local.get $meta)))
        (local.set $fb (i32.add (local.get $p) (i32.const 8)))
        (local.set $msg (call $fb_deref (local.get $fb)))
        (local.set $f (call $fb_field (local.get $msg) (i32.const 3)))
        (local.set $bl (if (result i32) (local.get $f)
          (then (i32.wrap_i64 (i64.load (local.get $f)))) (else (i32.const 0))))
        (local.set $f (call $fb_field (local.get $msg) (i32.const 1)))
        (if (i32.and (i32.ne (local.get $f) (i32.const 0)) (i32.eq (i32.load8_u (local.get $f)) (i32.const 3)))
          (then
            (local.set $hdr (call $fb_deref (call $fb_field (local.get $msg) (i32.const 2))))
            (local.set $f (call $fb_field (local.get $hdr) (i32.const 0)))
            (global.set $rows (if (result i32) (local.get $f)
              (then (i32.wrap_i64 (i64.load (local.get $f)))) (else (i32.const 0))))
            (global.set $bufs (i32.add (call $fb_deref (call $fb_field (local.get $hdr) (i32.const 2))) (i32.const 4)))
            (global.set $body (i32.add (local.get $fb) (local.get $meta)))
            (return (i32.const 1))))
        (local.set $p (i32.add (i32.add (local.get $fb) (local.get $meta)) (local.get $bl)))
        (br $next)))
    (i32.const 0))

  ;; Buffer i of the batch (in column order: validity, [offsets,] values per column).
  (func $buf (param $i i32) (result i32)
    (i32.add (global.get $body)
      (i32.wrap_i64 (i64.load (i32.add (global.get $bufs) (i32.shl (local.get $i) (i32.const 4)))))))
  (func $buf_len (param $i i32) (result i32)
    (i32.wrap_i64 (i64.load offset=8 (i32.add (global.get $bufs) (i32.shl (local.get $i) (i32.const 4))))))
  ;; Row r is valid in the column whose validity buffer is i (an empty buffer: all valid).
  (func $valid (param $i i32) (param $r i32) (result i32)
    (if (result i32) (i32.eqz (call $buf_len (local.get $i)))
      (then (i32.const 1))
      (else (i32.and
        (i32.shr_u (i32.load8_u (i32.add (call $buf (local.get $i)) (i32.shr_u (local.get $r) (i32.const 3))))
                   (i32.and (local.get $r) (i32.const 7)))
        (i32.const 1)))))
  ;; Row r of a Float64 column whose validity buffer is i (values are buffer i+1).
  (func $f64 (param $i i32) (param $r i32) (result f64)
    (f64.load (i32.add (call $buf (i32.add (local.get $i) (i32.const 1))) (i32.shl (local.get $r) (i32.const 3)))))
  ;; Row r of a Utf8 column whose validity buffer is i: (address, length).
  (func $str (param $i i32) (param $r i32) (result i32 i32)
    (local $o i32) (local $s i32)
    (local.set $o (i32.add (call $buf (i32.add (local.get $i) (i32.const 1))) (i32.shl (local.get $r) (i32.const 2))))
    (local.set $s (i32.load (local.get $o)))
    (i32.add (call $buf (i32.add (local.get $i) (i32.const 2))) (local.get $s))
    (i32.sub (i32.load offset=4 (local.get $o)) (local.get $s)))

  ;; ---- writing the output: [status u32][0 u32][Schema][RecordBatch][body][end] ----
  (global $out (mut i32) (i32.const 0))
  (global $out_n (mut i32) (i32.const 0))
  (global $out_vlen (mut i32) (i32.const 0))
  (global $out_nulls (mut i32) (i32.const 0))

  ;; Start a Float64 output of n rows, all valid; the address of its first value.
  (func $out_begin (param $n i32) (result i32)
    (local $vlen i32) (local $p i32)
    (local.set $vlen (i32.and (i32.add (i32.shr_u (i32.add (local.get $n) (i32.const 7)) (i32.const 3)) (i32.const 7)) (i32.const -8)))
    (local.set $p (call $alloc (i32.add (i32.add (i32.const 280) (local.get $vlen)) (i32.shl (local.get $n) (i32.const 3)))))
    (if (i32.eqz (local.get $p)) (then unreachable))
    (global.set $out (local.get $p))
    (global.set $out_n (local.get $n))
    (global.set $out_vlen (local.get $vlen))
    (global.set $out_nulls (i32.const 0))
    (i64.store (local.get $p) (i64.const 0))
    (memory.copy (i32.add (local.get $p) (i32.const 8)) (i32.const 16) (i32.const 264))
    (memory.fill (i32.add (local.get $p) (i32.const 272)) (i32.const 255) (local.get $vlen))
    (i32.add (i32.add (local.get $p) (i32.const 272)) (local.get $vlen)))
  (func $out_set (param $r i32) (param $v f64)
    (f64.store (i32.add (i32.add (i32.add (global.get $out) (i32.const 272)) (global.get $out_vlen))
                        (i32.shl (local.get $r) (i32.const 3)))
               (local.get $v)))
  (func $out_null (param $r i32)
    (local $a i32)
    (local.set $a (i32.add (i32.add (global.get $out) (i32.const 272)) (i32.shr_u (local.get $r) (i32.const 3))))
    (i32.store8 (local.get $a)
      (i32.and (i32.load8_u (local.get $a))
               (i32.xor (i32.shl (i32.const 1) (i32.and (local.get $r) (i32.const 7))) (i32.const -1))))
    (call $out_set (local.get $r) (f64.const 0))
    (global.set $out_nulls (i32.add (global.get $out_nulls) (i32.const 1))))
  ;; Output validity = validity buffer i AND validity buffer j (an empty buffer: all
  ;; valid), a byte at a time; counts the nulls. For functions that compute every row
  ;; (values under nulls are ignored) and are null where an argument is.
  (func $out_valid_and (param $i i32) (param $j i32)
    (local $o i32) (local $nb i32) (local $k i32) (local $pi i32) (local $pj i32)
    (local $li i32) (local $lj i32) (local $byte i32) (local $valid i32) (local $tail i32)
    (local.set $o (i32.add (global.get $out) (i32.const 272)))
    (local.set $nb (i32.shr_u (i32.add (global.get $out_n) (i32.const 7)) (i32.const 3)))
    (local.set $pi (call $buf (local.get $i)))
    (local.set $li (call $buf_len (local.get $i)))
    (local.set $pj (call $buf (local.get $j)))
    (local.set $lj (call $buf_len (local.get $j)))
    (block $done
      (loop $l
        (br_if $done (i32.ge_u (local.get $k) (local.get $nb)))
        (local.set $byte (i32.const 255))
        (if (local.get $li) (then (local.set $byte (i32.and (local.get $byte) (i32.load8_u (i32.add (local.get $pi) (local.get $k)))))))
        (if (local.get $lj) (then (local.set $byte (i32.and (local.get $byte) (i32.load8_u (i32.add (local.get $pj) (local.get $k)))))))
        ;; Bits past the last row count as null nowhere: clear them.
        (if (i32.and (i32.eq (local.get $k) (i32.sub (local.get $nb) (i32.const 1)))
                     (i32.ne (local.tee $tail (i32.and (global.get $out_n) (i32.const 7))) (i32.const 0)))
          (then (local.set $byte (i32.and (local.get $byte) (i32.sub (i32.shl (i32.const 1) (local.get $tail)) (i32.const 1))))))
        (i32.store8 (i32.add (local.get $o) (local.get $k)) (local.get $byte))
        (local.set $valid (i32.add (local.get $valid) (i32.popcnt (local.get $byte))))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br $l)))
    (global.set $out_nulls (i32.sub (global.get $out_n) (local.get $valid))))

  ;; Finish the output: patch lengths and offsets; the packed (address, length) result.
  (func $out_finish (result i64)
    (local $m i32) (local $n i64) (local $vlen i64) (local $end i32)
    (local.set $m (i32.add (global.get $out) (i32.const 128)))
    (local.set $n (i64.extend_i32_u (global.get $out_n)))
    (local.set $vlen (i64.extend_i32_u (global.get $out_vlen)))
    (i64.store offset=32 (local.get $m) (i64.add (local.get $vlen) (i64.shl (local.get $n) (i64.const 3))))
    (i64.store offset=64 (local.get $m) (local.get $n))
    (i64.store offset=88 (local.get $m) (local.get $n))
    (i64.store offset=96 (local.get $m) (i64.extend_i32_u (global.get $out_nulls)))
    (i64.store offset=112 (local.get $m) (i64.const 0))
    (i64.store offset=120 (local.get $m) (local.get $vlen))
    (i64.store offset=128 (local.get $m) (local.get $vlen))
    (i64.store offset=136 (local.get $m) (i64.shl (local.get $n) (i64.const 3)))
    (local.set $end (i32.add (i32.add (global.get $out) (i32.const 272))
                             (i32.add (global.get $out_vlen) (i32.shl (global.get $out_n) (i32.const 3)))))
    (i64.store (local.get $end) (i64.const 0xffffffff))
    (i64.or (i64.shl (i64.extend_i32_u (global.get $out)) (i64.const 32))
            (i64.extend_i32_u (i32.sub (i32.add (local.get $end) (i32.const 8)) (global.get $out)))))

  ;; An error result with the message [msg, msg+len).
  (func $fail (param $msg i32) (param $len i32) (result i64)
    (local $p i32)
    (local.set $p (call $alloc (i32.add (local.get $len) (i32.const 8))))
    (if (i32.eqz (local.get $p)) (then unreachable))
    (i32.store (local.get $p) (i32.const 1))
    (i32.store offset=4 (local.get $p) (i32.const 0))
    (memory.copy (i32.add (local.get $p) (i32.const 8)) (local.get $msg) (local.get $len))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (i32.add (local.get $len) (i32.const 8)))))
  (data (i32.const 300) "no record batch in the input")
  (func $fail_no_batch (result i64) (call $fail (i32.const 300) (i32.const 28)))
  ;; ---- end of prelude ----
