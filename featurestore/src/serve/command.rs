//! The commands carried in Flight tickets and descriptors: the protocol crate's
//! ([`quiver_flight_proto::Command`]), checked against this server's [`crate::Limits`]
//! ([`crate::Limits::wire`]).

pub use quiver_flight_proto::Command;
pub(crate) use quiver_flight_proto::{CommandError, json_batch};

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use quiver_flight_proto::{Command, WireLimits};

    proptest! {
        /// Decoding never panics and never accepts something over the limits.
        #[test]
        fn decoding_arbitrary_bytes_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let l = WireLimits { max_command_bytes: 256, max_keys: 4 };
            if Command::decode(&bytes, &l).is_ok() { prop_assert!(bytes.len() <= 256) }
        }

        #[test]
        fn decoding_json_shaped_input_is_total(view in "[a-z]{0,300}", n in 0usize..8, extra in any::<bool>()) {
            let l = WireLimits { max_keys: 4, ..WireLimits::default() };
            let keys: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            let json = format!(r#"{{"type":"online","view":"{view}","keys":{{"k":[{}]}}{}}}"#, keys.join(","), if extra { r#","x":1"# } else { "" });
            let r = Command::decode(json.as_bytes(), &l);
            let ok = !view.is_empty() && view.len() <= 256 && n <= 4 && !extra;
            prop_assert_eq!(r.is_ok(), ok, "{:?}", r);
        }
    }
}
