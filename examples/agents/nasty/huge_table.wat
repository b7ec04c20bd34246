;; Declares a table of 100 million function references (800 MB at 8 bytes an element).
;; Must be refused at instantiation: the store caps elements per table (max_table_elements).
(module
  (memory (export "memory") 1)
  (table 100000000 funcref)
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "agent_handle") (param i32 i32) (result i64) (i64.const 0))
)
