//! The fuzz target of the frontend's inputs (`fuzz/fuzz_targets/frontend_inputs.rs`),
//! also replayed over the checked-in corpus by `tests/fuzz_corpus.rs`:
//! every operation's JSON body parses or is refused as a
//! SerializationException (under the fuzzer's RSS limit, so a body that
//! blows memory up counts as a crash); and a token's payload, once its tag
//! verifies, decodes only to an iterator that encodes back to itself —
//! forged lengths, positions and timestamps included.

use crate::iterator::{Domain, TokenSigner};

/// `data`: one byte choosing the operation, then the body (also used as
/// a token payload and as token text).
pub fn exercise(data: &[u8]) {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    crate::ops::parse_any_input(*selector, body);

    let signer = TokenSigner::new(b"fuzzing key");
    // Text off the wire: without the key, nothing opens.
    if let Ok(text) = std::str::from_utf8(body) {
        assert!(
            signer.decode_iterator(text).is_none(),
            "an unsigned iterator opened"
        );
        assert!(signer.open(Domain::NextToken, text).is_none());
    }
    // A payload the key signed: decoded, it round-trips.
    let sealed = signer.seal(Domain::ShardIterator, body);
    if let Some(iterator) = signer.decode_iterator(&sealed) {
        let again = signer.encode_iterator(&iterator);
        assert_eq!(signer.decode_iterator(&again), Some(iterator));
    }
    assert!(
        signer.open(Domain::NextToken, &sealed).is_none(),
        "domains stay apart"
    );
}
