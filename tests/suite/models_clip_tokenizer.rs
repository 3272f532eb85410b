//! CLIP's BPE tokenizer against transformers' CLIPTokenizer: the fixture in
//! tests/fixtures/crosscheck/clip_tokenizer/ (a small BPE learnt by crosscheck.py from a
//! corpus, and the ids transformers gives for tricky strings at context 16).

use std::path::PathBuf;
use transferlab::models::ClipTokenizer;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crosscheck/clip_tokenizer")
}

fn cases() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap()
}

#[test]
fn ids_match_transformers_on_tricky_strings() {
    let fx = cases();
    let context = fx["context"].as_u64().unwrap() as usize;
    let tok = ClipTokenizer::from_files(&dir().join("vocab.json"), &dir().join("merges.txt"), context).unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
        let got = tok.encode_batch(&[text]).unwrap().flatten_all().unwrap().to_vec1::<u32>().unwrap();
        assert_eq!(got, want, "{text:?}");
    }
}

#[test]
fn long_text_is_truncated_keeping_the_end_token() {
    let tok = ClipTokenizer::from_files(&dir().join("vocab.json"), &dir().join("merges.txt"), 16).unwrap();
    let ids = tok.encode(&"word ".repeat(100)).unwrap();
    assert_eq!(ids.len(), 16);
    assert_eq!((ids[0], ids[15]), (tok.start_id(), tok.end_id()));
    assert_eq!(tok.encode_batch(&["a", &"word ".repeat(100)]).unwrap().dims(), &[2, 16]);
}

#[test]
fn our_bpe_trainer_learns_the_scripts_merges() {
    let fx = cases();
    let want: Vec<(String, String)> = serde_json::from_value(fx["merges"].clone()).unwrap();
    let corpus = [
        "a photo of a red circle.", "a photo of a blue square.", "a bad photo of the green triangle!",
        "itap of a small dog", "a close-up photo of a cat's face", "there's 12 cats and 3 dogs",
        "the photo isn't great, but we'll see", "CLIP's BPE: byte-level merges", "naïve café résumé",
        "a photo of the big yellow truck", "a blurry photo of an airplane", "a sculpture of a horse",
    ];
    let tok = ClipTokenizer::train(&corpus, 120, 16).unwrap();
    let d = tempfile::tempdir().unwrap();
    tok.save(d.path()).unwrap();
    let text = std::fs::read_to_string(d.path().join("merges.txt")).unwrap();
    let got: Vec<(String, String)> = text.lines().skip(1).map(|l| {
        let (a, b) = l.split_once(' ').unwrap();
        (a.to_string(), b.to_string())
    }).collect();
    assert_eq!(got, want);
    // The saved files read back into the same tokenizer.
    let back = ClipTokenizer::from_files(&d.path().join("vocab.json"), &d.path().join("merges.txt"), 16).unwrap();
    let s = "a close-up photo of 12 cats";
    assert_eq!(back.encode(s).unwrap(), tok.encode(s).unwrap());
    assert_eq!(tok.decode(&tok.encode(s).unwrap()), "a close - up photo of 1 2 cats");
}

#[test]
fn missing_or_broken_files_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let err = ClipTokenizer::from_files(&d.path().join("vocab.json"), &dir().join("merges.txt"), 77).unwrap_err().to_string();
    assert!(err.contains("vocab.json"), "{err}");
    std::fs::write(d.path().join("vocab.json"), r#"{"a": 0}"#).unwrap();
    let err = ClipTokenizer::from_files(&d.path().join("vocab.json"), &dir().join("merges.txt"), 77).unwrap_err().to_string();
    assert!(err.contains("<|startoftext|>"), "{err}");
    std::fs::write(d.path().join("merges.txt"), "#version: 0.2\na b c\n").unwrap();
    let err = ClipTokenizer::from_files(&dir().join("vocab.json"), &d.path().join("merges.txt"), 77).unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");
    let err = ClipTokenizer::from_files(&dir().join("vocab.json"), &dir().join("merges.txt"), 1).unwrap_err().to_string();
    assert!(err.contains("context"), "{err}");
}
