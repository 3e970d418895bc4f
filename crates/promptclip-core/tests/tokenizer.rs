//! CLIP tokenization against the real vocabulary and an independent implementation
//! (transformers' slow Python CLIPTokenizer with ftfy; scripts/make_tokenizer_fixture.py).
mod common;
use common::fixtures;
use promptclip_core::tokenizer::{clip_vocab_from_merge_list, ClipTokenizer};

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

fn cases() -> Vec<Case> {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenizer/cases.json")).unwrap())
        .unwrap()
}

fn check_all(tok: &ClipTokenizer, label: &str) {
    let cases = cases();
    assert!(cases.len() >= 300, "fixture has {} cases", cases.len());
    let mut failures = Vec::new();
    for c in &cases {
        let ids = tok.encode(&c.text).unwrap();
        if ids != c.ids {
            failures.push(format!(
                "{:?}\n  ours {:?}\n  ref  {:?}",
                c.text, ids, c.ids
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{label}: {} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn known_sentence() {
    let tok = ClipTokenizer::bundled(77).unwrap();
    assert_eq!(
        tok.encode("a photo of a dog.").unwrap(),
        vec![49406, 320, 1125, 539, 320, 1929, 269, 49407]
    );
    assert_eq!(tok.vocab_size(), 49408);
}

#[test]
fn bundled_vocabulary_matches_independent_implementation() {
    check_all(&ClipTokenizer::bundled(77).unwrap(), "bundled");
}

#[test]
fn checkpoint_tokenizer_json_matches_independent_implementation() {
    check_all(
        &ClipTokenizer::from_tokenizer_json(&fixtures().join("tiny-clip-hf/tokenizer.json"), 77)
            .unwrap(),
        "tokenizer.json",
    );
}

#[test]
fn vocab_and_merges_files_match() {
    // Write vocab.json + merges.txt the way Hugging Face folders hold them, from the shipped list.
    let gz = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/bpe_simple_vocab_16e6.txt.gz"
    ))
    .unwrap();
    let (vocab, merges) = clip_vocab_from_merge_list(&gz).unwrap();
    assert_eq!(vocab.len(), 49408);
    assert_eq!(merges.len(), 48894);
    let dir = tempfile::tempdir().unwrap();
    let map: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i.into()))
        .collect();
    std::fs::write(
        dir.path().join("vocab.json"),
        serde_json::Value::Object(map).to_string(),
    )
    .unwrap();
    let merges_txt: String = std::iter::once("#version: 0.2".to_string())
        .chain(merges.iter().map(|(a, b)| format!("{a} {b}")))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.path().join("merges.txt"), merges_txt).unwrap();
    check_all(
        &ClipTokenizer::from_dir_or_bundled(dir.path(), 77).unwrap(),
        "vocab.json+merges.txt",
    );
}

#[test]
fn truncation_keeps_end_token() {
    let tok = ClipTokenizer::bundled(77).unwrap();
    let long = "photo ".repeat(200);
    let ids = tok.encode(&long).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0], tok.sot);
    assert_eq!(ids[76], tok.eot);
    // What is scored is never cut: a batch refuses the long text, naming it (issue 23).
    let e = tok.encode_batch(&["dog", long.as_str()]).unwrap_err();
    assert_eq!(e.code(), "E_INVALID_ARGUMENT");
    assert!(
        e.to_string().contains("texts[1]") && e.to_string().contains("202 tokens"),
        "{e}"
    );
    let exact = "photo ".repeat(75);
    let batch = tok.encode_batch(&[exact.as_str(), "dog"]).unwrap();
    assert_eq!(batch.eot, vec![76, 2]);
    assert_eq!(batch.ids.len(), 2 * 77);
    assert!(
        batch.ids[77 + 3..].iter().all(|&x| x == 0),
        "padding is 0 as in CLIP's tokenize"
    );
    assert!(tok.encode_batch(&["photo ".repeat(76)]).is_err());
}

#[test]
fn cleanup_like_openai() {
    let tok = ClipTokenizer::bundled(77).unwrap();
    let same = |a: &str, b: &str| {
        assert_eq!(
            tok.encode(a).unwrap(),
            tok.encode(b).unwrap(),
            "{a:?} vs {b:?}"
        )
    };
    same("  A   Photo\tof a\nDOG. ", "a photo of a dog.");
    same("don\u{2019}t", "don't");
    same("rock &amp; roll", "rock & roll");
    same("caf&#233;", "café");
    same("cafe\u{301}", "café"); // NFC
}

/// A tokenizer.json cut inside its "decoder" value made tokenizers 0.23 panic (its decoder's
/// Deserialize calls `expect`) instead of reporting the syntax error; found by fuzz_readers with
/// PROPTEST_CASES=3000. It is now a coded error naming the file.
#[test]
fn a_tokenizer_file_cut_inside_its_decoder_is_a_coded_error() {
    let text = std::fs::read_to_string(fixtures().join("tiny-clip-hf/tokenizer.json")).unwrap();
    let at = text.find("\"decoder\"").expect("the fixture has a decoder") + 40;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, &text[..at]).unwrap();
    let e = std::panic::catch_unwind(|| ClipTokenizer::from_tokenizer_json(&path, 77))
        .expect("no panic")
        .expect_err("an error");
    assert_eq!(e.code(), "E_TOKENIZER", "{e}");
    let message = e.to_string();
    assert!(
        message.contains("tokenizer.json") && message.contains("not valid JSON"),
        "{message}"
    );
}
