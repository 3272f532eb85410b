//! CLIP's byte-level BPE tokenizer (OpenAI's `simple_tokenizer.py`, HF's `CLIPTokenizer`),
//! read from a hub repository's `vocab.json` and `merges.txt`. Ours rather than the
//! `tokenizers` crate: that crate is a large build (onig / esaxx) for what is 150 lines.
//!
//! Steps: whitespace runs become one space, the text is trimmed and lower-cased; the CLIP
//! regex splits it into words (`'s 't 're 've 'm 'll 'd`, letter runs, single digits, runs of
//! other non-space characters); each word's UTF-8 bytes are mapped to printable characters
//! (GPT-2's `bytes_to_unicode`), the last one marked with `</w>`, and merged by rank;
//! `<|startoftext|>` and `<|endoftext|>` frame the ids, which are truncated (the end token
//! kept) or padded to the context length (77 for the released models).
//!
//! Deviation: ftfy's mojibake repair and Unicode NFC normalisation are not applied (no
//! dependency for them); text already in NFC, as typed text almost always is, tokenizes as in
//! HF. Padding uses the end-of-text id, as HF's tokenizer does (OpenAI's pads with 0; the
//! text tower reads only up to the end token, so the embeddings are the same).

use crate::error::{Error, Result};
use regex::Regex;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const START_OF_TEXT: &str = "<|startoftext|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";
/// The released CLIP models' context length.
pub const CLIP_CONTEXT: usize = 77;
const PATTERN: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+";

/// GPT-2's reversible map from bytes to printable characters, in vocabulary order.
pub fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter().zip(cs).map(|(b, c)| (b as u8, char::from_u32(c).expect("valid code point"))).collect()
}

/// The tokenizer: vocabulary, merge ranks and context length.
///
/// ```
/// use transferlab::models::ClipTokenizer;
/// // A tiny BPE learnt from two captions.
/// let tok = ClipTokenizer::train(&["a red circle", "a blue square"], 20, 8)?;
/// let ids = tok.encode("A  Red circle!")?;
/// assert_eq!(ids[0], tok.start_id());
/// assert_eq!(tok.decode(&ids), "a red circle !");
/// assert_eq!(tok.encode_batch(&["a red circle"])?.dims(), &[1, 8]);
/// # Ok::<(), transferlab::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    encoder: HashMap<String, u32>,
    decoder: HashMap<u32, String>,
    ranks: HashMap<(String, String), usize>,
    byte_encoder: HashMap<u8, char>,
    pattern: Regex,
    start: u32,
    end: u32,
    context: usize,
}

fn clean(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

impl ClipTokenizer {
    /// From a vocabulary (token -> id) and merges in rank order.
    pub fn new(vocab: HashMap<String, u32>, merges: Vec<(String, String)>, context: usize) -> Result<Self> {
        if context < 2 {
            return Err(Error::invalid("CLIP context length", format!("{context}; at least 2 (start and end tokens)")));
        }
        let start = *vocab.get(START_OF_TEXT).ok_or_else(|| Error::invalid("CLIP vocabulary", format!("it has no {START_OF_TEXT} token; is this a CLIP vocab.json?")))?;
        let end = *vocab.get(END_OF_TEXT).ok_or_else(|| Error::invalid("CLIP vocabulary", format!("it has no {END_OF_TEXT} token; is this a CLIP vocab.json?")))?;
        let byte_encoder: HashMap<u8, char> = bytes_to_unicode().into_iter().collect();
        if let Some((_, c)) = byte_encoder.iter().find(|(_, c)| !vocab.contains_key(&c.to_string())) {
            return Err(Error::invalid("CLIP vocabulary", format!("the byte token {c:?} is missing; a byte-level BPE vocabulary has all 256")));
        }
        let ranks = merges.into_iter().enumerate().map(|(i, m)| (m, i)).collect();
        let decoder = vocab.iter().map(|(k, v)| (*v, k.clone())).collect();
        Ok(Self { encoder: vocab, decoder, ranks, byte_encoder, pattern: Regex::new(PATTERN).expect("valid pattern"), start, end, context })
    }

    /// From a hub repository's `vocab.json` and `merges.txt`.
    pub fn from_files(vocab_json: &Path, merges_txt: &Path, context: usize) -> Result<Self> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| Error::Io { action: "reading CLIP tokenizer file", path: p.to_path_buf(), source: e })
        };
        let vocab: HashMap<String, u32> = serde_json::from_str(&read(vocab_json)?)
            .map_err(|e| Error::Format { path: vocab_json.to_path_buf(), format: "vocab.json (token -> id)", reason: e.to_string() })?;
        let merges = parse_merges(&read(merges_txt)?).map_err(|reason| Error::Format { path: merges_txt.to_path_buf(), format: "merges.txt", reason })?;
        Self::new(vocab, merges, context)
    }

    /// Write `vocab.json` and `merges.txt` (HF's layout) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let sorted: BTreeMap<u32, &String> = self.decoder.iter().map(|(k, v)| (*k, v)).collect();
        let mut vocab = serde_json::Map::new();
        for (id, tok) in sorted {
            vocab.insert(tok.clone(), id.into());
        }
        let mut merges: Vec<(&(String, String), &usize)> = self.ranks.iter().collect();
        merges.sort_by_key(|(_, r)| **r);
        let mut text = String::from("#version: 0.2\n");
        for ((a, b), _) in merges {
            text.push_str(&format!("{a} {b}\n"));
        }
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).map_err(|e| Error::Io { action: "writing CLIP tokenizer file", path: p, source: e })
        };
        write("vocab.json", serde_json::Value::Object(vocab).to_string().as_bytes())?;
        write("merges.txt", text.as_bytes())
    }

    pub fn start_id(&self) -> u32 {
        self.start
    }

    pub fn end_id(&self) -> u32 {
        self.end
    }

    pub fn context(&self) -> usize {
        self.context
    }

    pub fn vocab_size(&self) -> usize {
        self.encoder.len()
    }

    fn words(&self, text: &str) -> Vec<String> {
        let text = clean(text);
        self.pattern.find_iter(&text).map(|m| m.as_str().to_string()).collect()
    }

    fn bpe(&self, word: &str) -> Vec<String> {
        if word == START_OF_TEXT || word == END_OF_TEXT {
            return vec![word.to_string()];
        }
        let chars: Vec<String> = word.bytes().map(|b| self.byte_encoder[&b].to_string()).collect();
        let mut parts = chars;
        if let Some(last) = parts.last_mut() {
            last.push_str("</w>");
        }
        while parts.len() > 1 {
            let best = parts.windows(2).enumerate().filter_map(|(i, w)| self.ranks.get(&(w[0].clone(), w[1].clone())).map(|r| (*r, i))).min();
            let Some((_, i)) = best else { break };
            let (a, b) = (parts[i].clone(), parts[i + 1].clone());
            // Merge every non-overlapping occurrence of the pair, left to right.
            let mut merged = Vec::with_capacity(parts.len());
            let mut j = 0;
            while j < parts.len() {
                if j + 1 < parts.len() && parts[j] == a && parts[j + 1] == b {
                    merged.push(format!("{a}{b}"));
                    j += 2;
                } else {
                    merged.push(parts[j].clone());
                    j += 1;
                }
            }
            parts = merged;
        }
        parts
    }

    /// BPE token ids of `text` without the start/end tokens or any length limit.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.words(text).iter().flat_map(|w| self.bpe(w)).map(|t| *self.encoder.get(&t).unwrap_or(&self.end)).collect()
    }

    /// `[start] tokens [end]`, truncated to the context length (the end token kept, as
    /// OpenAI's `tokenize(truncate=True)` and HF's `truncation=True` do), not padded.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = vec![self.start];
        ids.extend(self.tokenize(text).into_iter().take(self.context - 2));
        ids.push(self.end);
        Ok(ids)
    }

    /// A (N, context) u32 tensor of encoded texts, padded with the end-of-text id.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<candle_core::Tensor> {
        let mut all = Vec::with_capacity(texts.len() * self.context);
        for t in texts {
            let mut ids = self.encode(t)?;
            ids.resize(self.context, self.end);
            all.extend(ids);
        }
        Ok(candle_core::Tensor::from_vec(all, (texts.len(), self.context), &candle_core::Device::Cpu)?)
    }

    /// Text of token ids (special tokens dropped, `</w>` as a space).
    pub fn decode(&self, ids: &[u32]) -> String {
        let byte_decoder: HashMap<char, u8> = self.byte_encoder.iter().map(|(b, c)| (*c, *b)).collect();
        let mut s = String::new();
        for id in ids {
            if *id == self.start || *id == self.end {
                continue;
            }
            if let Some(t) = self.decoder.get(id) {
                s.push_str(t);
            }
        }
        let s = s.replace("</w>", " ");
        let bytes: Vec<u8> = s.chars().map(|c| if c == ' ' { b' ' } else { byte_decoder.get(&c).copied().unwrap_or(b'?') }).collect();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }

    /// Learn a small byte-level BPE from `corpus` (for tiny models trained here): `merges`
    /// merges at most, each the most frequent adjacent pair (ties: the smaller pair), with
    /// CLIP's vocabulary layout (256 bytes, 256 bytes + `</w>`, merges, start, end).
    pub fn train(corpus: &[&str], merges: usize, context: usize) -> Result<Self> {
        let probe = Regex::new(PATTERN).expect("valid pattern");
        let enc: HashMap<u8, char> = bytes_to_unicode().into_iter().collect();
        let mut words: BTreeMap<Vec<String>, usize> = BTreeMap::new();
        for line in corpus {
            let text = clean(line);
            for m in probe.find_iter(&text) {
                let mut w: Vec<String> = m.as_str().bytes().map(|b| enc[&b].to_string()).collect();
                if let Some(l) = w.last_mut() {
                    l.push_str("</w>");
                }
                *words.entry(w).or_default() += 1;
            }
        }
        let mut learnt: Vec<(String, String)> = Vec::new();
        for _ in 0..merges {
            let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
            for (w, n) in &words {
                for p in w.windows(2) {
                    *counts.entry((p[0].clone(), p[1].clone())).or_default() += n;
                }
            }
            let Some((best, _)) = counts.into_iter().fold(None, |acc: Option<((String, String), usize)>, (p, n)| match acc {
                Some((_, m)) if m >= n => acc,
                _ => Some((p, n)),
            }) else {
                break;
            };
            let mut next = BTreeMap::new();
            for (w, n) in words {
                let mut out = Vec::with_capacity(w.len());
                let mut j = 0;
                while j < w.len() {
                    if j + 1 < w.len() && w[j] == best.0 && w[j + 1] == best.1 {
                        out.push(format!("{}{}", best.0, best.1));
                        j += 2;
                    } else {
                        out.push(w[j].clone());
                        j += 1;
                    }
                }
                *next.entry(out).or_default() += n;
            }
            words = next;
            learnt.push(best);
        }
        let (vocab, merges) = clip_vocab(learnt);
        Self::new(vocab, merges, context)
    }
}

/// CLIP's vocabulary layout for a list of merges.
pub fn clip_vocab(merges: Vec<(String, String)>) -> (HashMap<String, u32>, Vec<(String, String)>) {
    let base: Vec<String> = bytes_to_unicode().into_iter().map(|(_, c)| c.to_string()).collect();
    let mut tokens: Vec<String> = base.clone();
    tokens.extend(base.iter().map(|c| format!("{c}</w>")));
    tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.push(START_OF_TEXT.into());
    tokens.push(END_OF_TEXT.into());
    let mut vocab = HashMap::new();
    for t in tokens {
        let id = vocab.len() as u32;
        vocab.entry(t).or_insert(id);
    }
    (vocab, merges)
}

fn parse_merges(text: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("#version") || line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), None) if !a.is_empty() && !b.is_empty() => out.push((a.to_string(), b.to_string())),
            _ => return Err(format!("line {} is {line:?}; each merge line is two tokens separated by one space", i + 1)),
        }
    }
    Ok(out)
}
