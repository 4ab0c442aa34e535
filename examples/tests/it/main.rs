//! Integration tests of the examples: the fraud scenario's data through quiver.

mod portable;
