//! CLIP's tokenizer: text clean-up, lower-casing, byte-level BPE with `</w>` word ends, start and
//! end tokens, a fixed context (77) with truncation that keeps the end token.
//!
//! The BPE itself runs in the `tokenizers` crate. A checkpoint's own `tokenizer.json` (or
//! `vocab.json` + `merges.txt`) is used when present; otherwise the tokenizer is built from CLIP's
//! merge list, which ships inside this crate (assets/, MIT, OpenAI).
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use tokenizers::Tokenizer;

pub const START_OF_TEXT: &str = "<|startoftext|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";

static BUNDLED_MERGES_GZ: &[u8] = include_bytes!("../assets/bpe_simple_vocab_16e6.txt.gz");

/// CLIP's pre-tokenisation pattern (OpenAI simple_tokenizer.py).
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Arc<Tokenizer>,
    pub sot: u32,
    pub eot: u32,
    pub context_length: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("context_length", &self.context_length)
            .finish()
    }
}

/// A padded batch of token ids with each row's EOT position.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    pub ids: Vec<u32>,
    pub eot: Vec<usize>,
    pub batch: usize,
    pub len: usize,
}

impl TokenBatch {
    pub fn ids_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.ids,
            (self.batch, self.len),
            device,
        )?)
    }
}

/// GPT-2/CLIP byte-to-unicode table: printable bytes map to themselves, the rest to 256+n.
pub fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .map(|(b, c)| (b as u8, char::from_u32(c).unwrap()))
        .collect()
}

/// CLIP's vocabulary and merges from the gzipped merge list (`bpe_simple_vocab_16e6.txt.gz`):
/// 256 byte tokens, the same with `</w>`, one token per merge, then the two special tokens.
/// A BPE vocabulary (tokens in id order) and its merges.
pub type VocabAndMerges = (Vec<String>, Vec<(String, String)>);

pub fn clip_vocab_from_merge_list(gz: &[u8]) -> Result<VocabAndMerges> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .map_err(|e| Error::Tokenizer(format!("cannot read the CLIP merge list: {e}")))?;
    // OpenAI: merges = lines[1 : 49152 - 256 - 2 + 1]
    let merges: Vec<(String, String)> = text
        .split('\n')
        .skip(1)
        .take(49152 - 256 - 2)
        .map(|line| {
            let mut it = line.split_whitespace();
            match (it.next(), it.next()) {
                (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                _ => Err(Error::Tokenizer(format!("malformed merge line `{line}`"))),
            }
        })
        .collect::<Result<_>>()?;
    let bytes: Vec<String> = bytes_to_unicode()
        .into_iter()
        .map(|(_, c)| c.to_string())
        .collect();
    let mut vocab = bytes.clone();
    vocab.extend(bytes.iter().map(|b| format!("{b}</w>")));
    vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
    vocab.push(START_OF_TEXT.into());
    vocab.push(END_OF_TEXT.into());
    Ok((vocab, merges))
}

/// A `tokenizers` pipeline equal to Hugging Face's CLIPTokenizerFast, for a given vocabulary.
fn tokenizer_from_vocab(vocab: serde_json::Value, merges: Vec<String>) -> Result<Tokenizer> {
    let special = |id: u64, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": true, "special": true})
    };
    let sot = vocab.get(START_OF_TEXT).and_then(|v| v.as_u64());
    let eot = vocab.get(END_OF_TEXT).and_then(|v| v.as_u64());
    let (Some(sot), Some(eot)) = (sot, eot) else {
        return Err(Error::Tokenizer(format!(
            "vocabulary lacks {START_OF_TEXT} or {END_OF_TEXT}"
        )));
    };
    let spec = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(sot, START_OF_TEXT), special(eot, END_OF_TEXT)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": CLIP_PATTERN}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": END_OF_TEXT,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
                  "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": merges}
    });
    Tokenizer::from_str(&spec.to_string())
        .map_err(|e| Error::Tokenizer(format!("cannot build the BPE tokenizer: {e}")))
}

fn bundled_tokenizer() -> Result<Arc<Tokenizer>> {
    static CELL: OnceLock<std::result::Result<Arc<Tokenizer>, String>> = OnceLock::new();
    CELL.get_or_init(|| {
        let build = || -> Result<Tokenizer> {
            let (vocab, merges) = clip_vocab_from_merge_list(BUNDLED_MERGES_GZ)?;
            let vocab: serde_json::Map<String, serde_json::Value> = vocab
                .into_iter()
                .enumerate()
                .map(|(i, t)| (t, serde_json::Value::from(i as u64)))
                .collect();
            let merges = merges
                .into_iter()
                .map(|(a, b)| format!("{a} {b}"))
                .collect();
            tokenizer_from_vocab(serde_json::Value::Object(vocab), merges)
        };
        build().map(Arc::new).map_err(|e| e.to_string())
    })
    .clone()
    .map_err(Error::Tokenizer)
}

/// Text clean-up that OpenAI's tokenizer applies before BPE (`basic_clean` + `whitespace_clean`):
/// HTML entities unescaped, typographic quotes straightened (part of ftfy.fix_text), whitespace
/// collapsed, trimmed, lower-cased. NFC normalisation happens in the tokenizer's normalizer.
pub fn clean_text(text: &str) -> String {
    let text = html_unescape(&html_unescape(text));
    let text: String = text
        .chars()
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}' => '\'',
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' => '"',
            c => c,
        })
        .collect();
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn html_unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest[1..].find(';').map(|j| j + 1).filter(|&j| j <= 10);
        let decoded = end.and_then(|j| {
            let entity = &rest[1..j];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ if entity.starts_with("#x") || entity.starts_with("#X") => {
                    u32::from_str_radix(&entity[2..], 16)
                        .ok()
                        .and_then(char::from_u32)
                }
                _ if entity.starts_with('#') => {
                    entity[1..].parse::<u32>().ok().and_then(char::from_u32)
                }
                _ => None,
            };
            c.map(|c| (c, j + 1))
        });
        match decoded {
            Some((c, consumed)) => {
                out.push(c);
                rest = &rest[consumed..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The one refusal of a prompt longer than CLIP's context (E_INVALID_ARGUMENT), shared by
/// training, zero-shot scoring and prediction: `what` names the prompt (class, template, nCtx),
/// `tokens` is how many it needs, `limit` the context length; `detail` is appended.
pub fn prompt_too_long(what: &str, tokens: usize, limit: usize, detail: &str) -> Error {
    Error::InvalidArgument(format!(
        "{what} does not fit CLIP's {limit}-token context: it needs {tokens} tokens, more than the limit of {limit}{detail}"
    ))
}

impl ClipTokenizer {
    fn from_tokenizer(inner: Arc<Tokenizer>, context_length: usize, source: &str) -> Result<Self> {
        let sot = inner.token_to_id(START_OF_TEXT);
        let eot = inner.token_to_id(END_OF_TEXT);
        let (Some(sot), Some(eot)) = (sot, eot) else {
            return Err(Error::Tokenizer(format!(
                "{source}: vocabulary lacks {START_OF_TEXT} or {END_OF_TEXT}"
            )));
        };
        if context_length < 2 {
            return Err(Error::InvalidArgument(format!(
                "context length {context_length} is too short"
            )));
        }
        Ok(Self {
            inner,
            sot,
            eot,
            context_length,
        })
    }

    /// CLIP's own vocabulary, shipped with the crate.
    pub fn bundled(context_length: usize) -> Result<Self> {
        Self::from_tokenizer(
            bundled_tokenizer()?,
            context_length,
            "bundled CLIP vocabulary",
        )
    }

    pub fn from_tokenizer_json(path: &Path, context_length: usize) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::FileNotFound(path.to_path_buf()));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| Error::Tokenizer(format!("{}: not UTF-8 text: {e}", path.display())))?;
        // The JSON is checked here first: tokenizers 0.23 panics (`expect("Helper")` in its
        // decoder's Deserialize) on a file cut inside its "decoder" value, where it would
        // otherwise report the syntax error. Found by tests/fuzz_readers.rs.
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .map_err(|e| Error::Tokenizer(format!("{}: not valid JSON: {e}", path.display())))?;
        // Any other panic of the library on a well-formed but unexpected file is its error too.
        let tok = std::panic::catch_unwind(|| Tokenizer::from_str(&text))
            .map_err(|panic| {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("a panic");
                Error::Tokenizer(format!(
                    "{}: the tokenizers library could not read it ({why})",
                    path.display()
                ))
            })?
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        Self::from_tokenizer(Arc::new(tok), context_length, &path.display().to_string())
    }

    pub fn from_vocab_merges(vocab: &Path, merges: &Path, context_length: usize) -> Result<Self> {
        let vocab_text = std::fs::read_to_string(vocab).map_err(|e| Error::io(vocab, e))?;
        let vocab_json: serde_json::Value = serde_json::from_str(&vocab_text).map_err(|e| {
            Error::Tokenizer(format!(
                "{}: not a JSON token->id map: {e}",
                vocab.display()
            ))
        })?;
        if !vocab_json.is_object() {
            return Err(Error::Tokenizer(format!(
                "{}: not a JSON token->id map",
                vocab.display()
            )));
        }
        let merges_text = std::fs::read_to_string(merges).map_err(|e| Error::io(merges, e))?;
        let merges: Vec<String> = merges_text
            .lines()
            .filter(|l| !l.starts_with("#version") && !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        let tok = tokenizer_from_vocab(vocab_json, merges)?;
        Self::from_tokenizer(Arc::new(tok), context_length, &vocab.display().to_string())
    }

    /// The checkpoint's own tokenizer if it has one, else CLIP's bundled vocabulary.
    pub fn from_dir_or_bundled(dir: &Path, context_length: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(&json, context_length);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.is_file() && merges.is_file() {
            return Self::from_vocab_merges(&vocab, &merges, context_length);
        }
        Self::bundled(context_length)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// BPE token ids of `text` without start/end tokens or truncation.
    pub fn encode_words(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(clean_text(text), false)
            .map_err(|e| Error::Tokenizer(format!("cannot tokenize {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `[SOS] tokens [EOT]` of `text`, unpadded, refused with [`prompt_too_long`] (naming it
    /// `what`) when it needs more than the context length: CLIP would score a cut prompt.
    pub fn encode_fitting(&self, text: &str, what: impl FnOnce() -> String) -> Result<Vec<u32>> {
        let words = self.encode_words(text)?;
        let tokens = words.len().saturating_add(2);
        if tokens > self.context_length {
            return Err(prompt_too_long(&what(), tokens, self.context_length, ""));
        }
        let mut ids = Vec::with_capacity(tokens);
        ids.push(self.sot);
        ids.extend_from_slice(&words);
        ids.push(self.eot);
        Ok(ids)
    }

    /// `[SOS] tokens [EOT]`, truncated to the context length with the EOT kept, unpadded.
    /// Only for showing tokens (`tokenize`); whatever is scored goes through [`Self::encode_fitting`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let words = self.encode_words(text)?;
        let keep = words.len().min(self.context_length - 2);
        let mut ids = Vec::with_capacity(keep + 2);
        ids.push(self.sot);
        ids.extend_from_slice(&words[..keep]);
        ids.push(self.eot);
        Ok(ids)
    }

    /// Encode and pad with 0 to the context length, as CLIP's `tokenize` does; a text longer
    /// than the context is refused (`texts[i]`), never cut. Callers that know what a text is (a
    /// class with a template) check it first with [`Self::encode_fitting`] to name it.
    pub fn encode_batch<S: AsRef<str>>(&self, texts: &[S]) -> Result<TokenBatch> {
        let len = self.context_length;
        let mut ids = vec![0u32; texts.len() * len];
        let mut eot = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            let row = self.encode_fitting(t.as_ref(), || format!("texts[{i}]"))?;
            ids[i * len..i * len + row.len()].copy_from_slice(&row);
            eot.push(row.len() - 1);
        }
        Ok(TokenBatch {
            ids,
            eot,
            batch: texts.len(),
            len,
        })
    }

    /// Readable text of one token: the byte-level characters mapped back to bytes, and the
    /// `</w>` word-end marker dropped. Independent of the checkpoint's decoder settings.
    pub fn decode_token(&self, id: u32) -> Option<String> {
        static INVERSE: OnceLock<std::collections::HashMap<char, u8>> = OnceLock::new();
        let inverse = INVERSE.get_or_init(|| {
            bytes_to_unicode()
                .into_iter()
                .map(|(b, c)| (c, b))
                .collect()
        });
        let token = self.inner.id_to_token(id)?;
        let token = token.strip_suffix("</w>").unwrap_or(&token);
        if token.starts_with("<|") {
            return Some(token.to_string());
        }
        let bytes: Vec<u8> = token
            .chars()
            .map(|c| inverse.get(&c).copied().unwrap_or(b'?'))
            .collect();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
}
