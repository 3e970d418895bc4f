//! Property (fuzz) tests of every reader of user files: safetensors headers and sizes (model
//! weights, learner files, checkpoints), a Hugging Face config.json, tokenizer files
//! (tokenizer.json, vocab.json + merges.txt), learner (prompt) files and training checkpoints,
//! each given random or mutated content. The property: the reader returns (Ok, or an error with a
//! code other than E_INTERNAL); it never panics, and never allocates beyond the file's size (an
//! allocation failure would abort the test binary).
//!
//! `cargo test` runs a bounded number of cases per reader (seconds). A longer run:
//!
//!     PROPTEST_CASES=2000 cargo test --release -p promptclip-core \
//!         --target x86_64-unknown-linux-gnu --test fuzz_readers -- --nocapture
//!
//! Each test prints how many inputs it ran and how many were accepted and refused (by code).
mod common;
use common::{dev, fixtures};
use promptclip_core::methods::coop::{CoopConfig, CoopContext};
use promptclip_core::methods::{io, Runtime};
use promptclip_core::tokenizer::ClipTokenizer;
use promptclip_core::train::checkpoint;
use promptclip_core::train::{fit, TrainConfig};
use promptclip_core::Clip;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, OnceLock};

/// Cases per reader: PROPTEST_CASES, else `default` (small enough for `cargo test`).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(default: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Outcomes by code ("ok" for accepted), printed at the end of each test.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, usize>>);

impl Tally {
    /// Record an outcome; an E_INTERNAL error fails the case (a bug, not a refusal).
    fn check<T>(&self, what: &str, r: promptclip_core::Result<T>) -> Result<(), TestCaseError> {
        let code = match &r {
            Ok(_) => "ok".to_string(),
            Err(e) => e.code().to_string(),
        };
        *self.0.lock().unwrap().entry(code.clone()).or_default() += 1;
        if let (Err(e), Ok(_)) = (&r, std::env::var("FUZZ_SHOW_ERRORS")) {
            println!(
                "{what}: {code}: {}",
                e.to_string().chars().take(300).collect::<String>()
            );
        }
        if let Err(e) = r {
            prop_assert!(
                code.starts_with("E_") && code != "E_INTERNAL",
                "{what}: {code}: {e}"
            );
        }
        Ok(())
    }

    fn report(&self, reader: &str, min_reads: usize) {
        let t = self.0.lock().unwrap();
        let n: usize = t.values().sum();
        println!("{reader}: {n} reads, outcomes {t:?}");
        // Panics and E_INTERNAL already fail a case; here the cases must have reached the
        // reader, and both accepted and refused (coded) outcomes must have occurred.
        assert!(
            n >= min_reads,
            "{reader}: only {n} reads reached the check, expected {min_reads}"
        );
        assert!(!t.contains_key("E_INTERNAL"), "{reader}: {t:?}");
        assert!(
            t.get("ok").copied().unwrap_or(0) > 0,
            "{reader}: nothing was accepted: {t:?}"
        );
        let refused: usize = t
            .iter()
            .filter(|(c, _)| c.starts_with("E_"))
            .map(|(_, n)| n)
            .sum();
        assert!(refused > 0, "{reader}: nothing was refused: {t:?}");
    }
}

/// A JSON value of the kinds that break readers: edge integers, floats, strings, containers.
fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            Value::from(-1),
            Value::from(0),
            Value::from(1),
            Value::from(3),
            Value::from(77),
            Value::from(i32::MAX),
            Value::from(u32::MAX),
            Value::from(1u64 << 32),
            Value::from(1u64 << 53),
            Value::from(u64::MAX),
            Value::from(i64::MIN),
        ]),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<i64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        Just(Value::Array(vec![])),
        Just(Value::Object(Default::default())),
        prop::collection::vec(any::<u32>().prop_map(Value::from), 0..4).prop_map(Value::Array),
    ]
}

/// A structural mutation of a JSON document.
#[derive(Debug, Clone)]
enum JsonEdit {
    /// Replace the node at this index (in pre-order) with a value.
    Replace(usize, Value),
    /// Remove the node at this index from its parent.
    Remove(usize),
}

fn json_edit() -> impl Strategy<Value = JsonEdit> {
    prop_oneof![
        3 => (any::<usize>(), json_value()).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        1 => any::<usize>().prop_map(JsonEdit::Remove),
    ]
}

/// JSON pointers of every node below the root, in pre-order.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(c, p, out);
            }
        }
        _ => {}
    }
}

/// Apply edits; `focus` restricts the nodes edited to those under a pointer prefix (so that a
/// huge vocabulary does not take every edit).
fn edit_json(mut doc: Value, edits: &[JsonEdit], focus: &[&str]) -> Value {
    for e in edits {
        let mut all = vec![];
        pointers(&doc, String::new(), &mut all);
        let nodes: Vec<&String> = all
            .iter()
            .filter(|p| focus.is_empty() || focus.iter().any(|f| p.starts_with(f)))
            .collect();
        if nodes.is_empty() {
            return doc;
        }
        match e {
            JsonEdit::Replace(i, v) => {
                if let Some(n) = doc.pointer_mut(nodes[i % nodes.len()]) {
                    *n = v.clone();
                }
            }
            JsonEdit::Remove(i) => {
                let p = nodes[i % nodes.len()].clone();
                let (parent, key) = p.rsplit_once('/').unwrap();
                match doc.pointer_mut(parent) {
                    Some(Value::Object(m)) => {
                        m.remove(&key.replace("~1", "/").replace("~0", "~"));
                    }
                    Some(Value::Array(a)) => {
                        if let Ok(i) = key.parse::<usize>() {
                            if i < a.len() {
                                a.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    doc
}

/// Byte-level damage: overwrite bytes, then perhaps truncate.
fn damage_bytes(mut b: Vec<u8>, writes: &[(usize, u8)], cut: Option<usize>) -> Vec<u8> {
    if b.is_empty() {
        return b;
    }
    for &(i, v) in writes {
        let n = b.len();
        b[i % n] = v;
    }
    if let Some(c) = cut {
        let n = b.len();
        b.truncate(c % (n + 1));
    }
    b
}

fn byte_writes() -> impl Strategy<Value = Vec<(usize, u8)>> {
    prop::collection::vec((any::<usize>(), any::<u8>()), 0..6)
}

/// A safetensors file's header (JSON) and data section.
fn split_safetensors(bytes: &[u8]) -> (Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

fn join_safetensors(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = header.to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Edits aimed at a safetensors header: a tensor's dtype, shape or offsets, the metadata.
fn header_edit() -> impl Strategy<Value = JsonEdit> {
    let dtype = prop::sample::select(vec![
        "F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64", "BOOL",
        "F8_E4M3", "F8_E5M2", "F4", "F6_E2M3", "E8M0", "C64", "X",
    ])
    .prop_map(Value::from);
    let dim = prop_oneof![
        0u64..5,
        Just(u64::MAX),
        Just(1u64 << 62),
        Just(1u64 << 32),
        any::<u64>()
    ];
    let shape = prop::collection::vec(dim.clone(), 0..4)
        .prop_map(|d| Value::Array(d.into_iter().map(Value::from).collect()));
    let offsets = (dim.clone(), dim).prop_map(|(a, b)| Value::from(vec![a, b]));
    prop_oneof![
        2 => (any::<usize>(), dtype).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        2 => (any::<usize>(), shape).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        2 => (any::<usize>(), offsets).prop_map(|(i, v)| JsonEdit::Replace(i, v)),
        2 => json_edit(),
    ]
}

/// The header edits apply to nodes of this kind (dtype edits to dtypes, and so on).
fn apply_header_edits(header: Value, edits: &[JsonEdit]) -> Value {
    let mut doc = header;
    for e in edits {
        let key = match e {
            JsonEdit::Replace(_, Value::String(_)) => "dtype",
            JsonEdit::Replace(_, Value::Array(a)) if a.len() == 2 => "data_offsets",
            JsonEdit::Replace(_, Value::Array(_)) => "shape",
            _ => "",
        };
        let focus: Vec<String> = if key.is_empty() {
            vec![]
        } else {
            let mut all = vec![];
            pointers(&doc, String::new(), &mut all);
            all.into_iter()
                .filter(|p| p.ends_with(&format!("/{key}")))
                .collect()
        };
        let focus: Vec<&str> = focus.iter().map(String::as_str).collect();
        if focus.is_empty() {
            doc = edit_json(doc, std::slice::from_ref(e), &[]);
        } else if let JsonEdit::Replace(i, v) = e {
            if let Some(n) = doc.pointer_mut(focus[i % focus.len()]) {
                *n = v.clone();
            }
        }
    }
    doc
}

fn clip() -> &'static Clip {
    static CLIP: OnceLock<Clip> = OnceLock::new();
    CLIP.get_or_init(|| Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap())
}

fn names() -> Vec<String> {
    vec!["red".into(), "green".into(), "blue".into()]
}

#[test]
fn safetensors_weights_headers_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::default();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    // A ViT and a ResNet CLIP (whose loader infers its stages, widths and grid from the shapes).
    for seed in ["tiny-clip-openai.safetensors", "resnet/tiny-rn.safetensors"] {
        let original = std::fs::read(fixtures().join(seed)).unwrap();
        let (header, data) = split_safetensors(&original);
        runner(48)
            .run(
                &(
                    prop::collection::vec(header_edit(), 1..4),
                    byte_writes(),
                    prop::option::weighted(0.2, any::<usize>()),
                    any::<bool>(),
                ),
                |(edits, writes, cut, structured)| {
                    let bytes = if structured {
                        join_safetensors(&apply_header_edits(header.clone(), &edits), &data)
                    } else {
                        // Byte damage within the length and the header.
                        let hl = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
                        let writes: Vec<_> = writes.iter().map(|&(p, v)| (p % hl, v)).collect();
                        damage_bytes(original.clone(), &writes, cut)
                    };
                    let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    let p = dir.path().join(format!("w{i}.safetensors"));
                    std::fs::write(&p, &bytes).unwrap();
                    tally.check("Clip::load", Clip::load(&p, &dev()))?;
                    tally.check(
                        "read_safetensors",
                        promptclip_core::files::read_safetensors(&p, &dev()),
                    )?;
                    std::fs::remove_file(&p).unwrap();
                    Ok(())
                },
            )
            .unwrap();
    }
    // Random bytes, and random headers over random data.
    runner(48)
        .run(
            &(
                prop::collection::vec(any::<u8>(), 0..64),
                prop::collection::vec(header_edit(), 0..3),
                0usize..64,
            ),
            |(junk, edits, data_len)| {
                let small = serde_json::json!({
                    "__metadata__": { "promptclip": "{}" },
                    "a": { "dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16] },
                    "b": { "dtype": "F16", "shape": [3], "data_offsets": [16, 22] },
                });
                for bytes in [
                    junk.clone(),
                    join_safetensors(&apply_header_edits(small, &edits), &vec![0u8; data_len]),
                ] {
                    let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    let p = dir.path().join(format!("r{i}.safetensors"));
                    std::fs::write(&p, &bytes).unwrap();
                    tally.check("Clip::load", Clip::load(&p, &dev()))?;
                    tally.check(
                        "read_safetensors",
                        promptclip_core::files::read_safetensors(&p, &dev()),
                    )?;
                    tally.check("io::load", io::load(&p, clip(), Runtime::default()))?;
                    tally.check("checkpoint::load", checkpoint::load(&p, &dev()))?;
                    std::fs::remove_file(&p).unwrap();
                }
                Ok(())
            },
        )
        .unwrap();
    tally.report("safetensors", cases(48) as usize);
}

/// A copy of the Hugging Face fixture folder whose config.json is `config`.
fn hf_folder(dir: &Path, i: usize, config: &[u8]) -> PathBuf {
    let src = fixtures().join("tiny-clip-hf");
    let out = dir.join(format!("m{i}"));
    std::fs::create_dir(&out).unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
        "tokenizer_config.json",
    ] {
        std::os::unix::fs::symlink(src.join(f), out.join(f)).unwrap();
    }
    std::fs::write(out.join("config.json"), config).unwrap();
    out
}

#[test]
fn config_json() {
    let original = std::fs::read(fixtures().join("tiny-clip-hf/config.json")).unwrap();
    let doc: Value = serde_json::from_slice(&original).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::default();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    runner(32)
        .run(
            &(
                prop::collection::vec(json_edit(), 1..4),
                byte_writes(),
                prop::option::weighted(0.2, any::<usize>()),
                any::<bool>(),
            ),
            |(edits, writes, cut, structured)| {
                let bytes = if structured {
                    edit_json(doc.clone(), &edits, &[]).to_string().into_bytes()
                } else {
                    damage_bytes(original.clone(), &writes, cut)
                };
                let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let folder = hf_folder(dir.path(), i, &bytes);
                tally.check("Clip::load", Clip::load(&folder, &dev()))?;
                std::fs::remove_dir_all(&folder).unwrap();
                Ok(())
            },
        )
        .unwrap();
    tally.report("config.json", cases(32) as usize);
}

#[test]
fn tokenizer_files() {
    let original = std::fs::read(fixtures().join("tiny-clip-hf/tokenizer.json")).unwrap();
    let doc: Value = serde_json::from_slice(&original).unwrap();
    // vocab.json and merges.txt from the same tokenizer.
    let vocab = doc["model"]["vocab"].clone();
    let merges: Vec<String> = doc["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            _ => unreachable!(),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let tally = Tally::default();
    let use_it = |t: &ClipTokenizer| {
        t.encode_words("a photo of a red cat, 123!")?;
        t.encode_batch(&["x".repeat(300), String::new()])?;
        Ok(())
    };
    let counter = std::sync::atomic::AtomicUsize::new(0);
    runner(24)
        .run(
            &(
                prop::collection::vec(json_edit(), 0..3),
                byte_writes(),
                prop::option::weighted(0.2, any::<usize>()),
                prop::collection::vec((any::<usize>(), ".{0,8}"), 0..4),
                0usize..4,
            ),
            |(edits, writes, cut, merge_edits, kind)| {
                let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let sub = dir.path().join(format!("t{i}"));
                std::fs::create_dir(&sub).unwrap();
                match kind {
                    // tokenizer.json: edits outside the vocabulary (which would take them all),
                    // then in it.
                    0 | 1 => {
                        let focus: &[&str] = if kind == 0 {
                            &[
                                "/normalizer",
                                "/pre_tokenizer",
                                "/post_processor",
                                "/decoder",
                                "/added_tokens",
                                "/model/type",
                                "/model/merges/0",
                                "/model/unk_token",
                                "/model/end_of_word_suffix",
                            ]
                        } else {
                            &["/model/vocab", "/model/merges"]
                        };
                        let p = sub.join("tokenizer.json");
                        std::fs::write(&p, edit_json(doc.clone(), &edits, focus).to_string())
                            .unwrap();
                        let r = ClipTokenizer::from_tokenizer_json(&p, 77);
                        tally.check("tokenizer.json", r.and_then(|t| use_it(&t)))?;
                    }
                    2 => {
                        let p = sub.join("tokenizer.json");
                        std::fs::write(
                            &p,
                            damage_bytes(
                                original[..4096.min(original.len())].to_vec(),
                                &writes,
                                cut,
                            ),
                        )
                        .unwrap();
                        tally.check(
                            "tokenizer.json bytes",
                            ClipTokenizer::from_tokenizer_json(&p, 77),
                        )?;
                    }
                    _ => {
                        let v = sub.join("vocab.json");
                        let m = sub.join("merges.txt");
                        let wrapped = serde_json::json!({ "v": vocab.clone() });
                        let edited = edit_json(wrapped, &edits, &["/v"]);
                        std::fs::write(&v, edited["v"].to_string()).unwrap();
                        let mut lines = merges.clone();
                        for (at, text) in &merge_edits {
                            let n = lines.len();
                            lines[at % n] = text.clone();
                        }
                        std::fs::write(&m, format!("#version: 0.2\n{}\n", lines.join("\n")))
                            .unwrap();
                        let r = ClipTokenizer::from_vocab_merges(&v, &m, 77);
                        tally.check("vocab.json+merges.txt", r.and_then(|t| use_it(&t)))?;
                    }
                }
                std::fs::remove_dir_all(&sub).unwrap();
                Ok(())
            },
        )
        .unwrap();
    tally.report("tokenizer files", cases(24) as usize);
}

/// A learner file's metadata JSON and tensors, and a function to write them back.
fn read_parts(
    path: &Path,
) -> (
    BTreeMap<String, candle_core::Tensor>,
    BTreeMap<String, String>,
) {
    let (t, m) = promptclip_core::files::read_safetensors(path, &candle_core::Device::Cpu).unwrap();
    (t.into_iter().collect(), m.into_iter().collect())
}

fn write_parts(
    path: &Path,
    tensors: &BTreeMap<String, candle_core::Tensor>,
    md: &BTreeMap<String, String>,
) {
    let refs: Vec<(&str, &candle_core::Tensor)> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    promptclip_core::files::write_safetensors_atomic(path, &refs, md.clone().into_iter().collect())
        .unwrap();
}

/// A tensor edit: another shape (same or other element count), another dtype, NaN.
fn tensor_edit() -> impl Strategy<Value = (usize, Vec<usize>, u8)> {
    (
        any::<usize>(),
        prop::collection::vec(0usize..9, 0..4),
        0u8..5,
    )
}

fn apply_tensor_edit(
    tensors: &mut BTreeMap<String, candle_core::Tensor>,
    (at, shape, kind): &(usize, Vec<usize>, u8),
) {
    use candle_core::{DType, Device, Tensor};
    let names: Vec<String> = tensors.keys().cloned().collect();
    if names.is_empty() {
        return;
    }
    let name = &names[at % names.len()];
    let t = &tensors[name];
    let n: usize = shape.iter().product();
    let new = match kind {
        0 => Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap(),
        1 => t.to_dtype(DType::F16).unwrap(),
        2 => t.to_dtype(DType::U8).unwrap(),
        3 => Tensor::full(f32::NAN, t.dims(), &Device::Cpu).unwrap(),
        _ => Tensor::zeros(n.max(1), DType::F64, &Device::Cpu).unwrap(),
    };
    tensors.insert(name.clone(), new);
}

#[test]
fn learner_files() {
    let clip = clip();
    let dir = tempfile::tempdir().unwrap();
    let mut originals = vec![];
    for (method, options) in [
        ("coop", serde_json::json!({ "nCtx": 2 })),
        (
            "coop",
            serde_json::json!({ "nCtx": 2, "classSpecific": true, "position": "middle" }),
        ),
        ("cocoop", serde_json::json!({})),
        ("kgcoop", serde_json::json!({})),
        ("linear-probe", serde_json::json!({})),
    ] {
        let l =
            promptclip_core::methods::create(clip, method, &names(), options, Runtime::default())
                .unwrap();
        let p = dir
            .path()
            .join(format!("{method}-{}.safetensors", originals.len()));
        io::save(&p, l.as_ref(), clip).unwrap();
        io::load(&p, clip, Runtime::default()).unwrap();
        originals.push(read_parts(&p));
    }
    let tally = Tally::default();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    runner(48)
        .run(
            &(
                any::<usize>(),
                prop::collection::vec(json_edit(), 0..4),
                prop::option::weighted(0.3, tensor_edit()),
            ),
            |(which, edits, tensor)| {
                let (mut tensors, mut md) = originals[which % originals.len()].clone();
                let meta: Value = serde_json::from_str(&md["promptclip"]).unwrap();
                md.insert(
                    "promptclip".into(),
                    edit_json(meta, &edits, &[]).to_string(),
                );
                if let Some(e) = &tensor {
                    apply_tensor_edit(&mut tensors, e);
                }
                let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let p = dir.path().join(format!("l{i}.safetensors"));
                write_parts(&p, &tensors, &md);
                tally.check("io::load", io::load(&p, clip, Runtime::default()))?;
                std::fs::remove_file(&p).unwrap();
                Ok(())
            },
        )
        .unwrap();
    tally.report("learner files", cases(48) as usize);
}

#[test]
fn checkpoints() {
    let clip = clip();
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = common::colours(2, 4, 0..3);
    let config = TrainConfig {
        epochs: 2,
        batch_size: 3,
        augment: false,
        checkpoint_path: Some(dir.path().join("run.ckpt")),
        checkpoint_every: 1,
        ..TrainConfig::default()
    };
    let learner = || {
        CoopContext::new(
            clip,
            &names(),
            CoopConfig {
                n_ctx: Some(2),
                ..CoopConfig::default()
            },
        )
        .unwrap()
    };
    // Stop after the first of two epochs, so that the checkpoint has a run left to resume.
    let cancel = AtomicBool::new(false);
    let _ = fit(
        clip,
        &learner(),
        &data,
        &config,
        &mut |p| {
            if p.epoch == 1 && p.step == p.steps_per_epoch {
                cancel.store(true, std::sync::atomic::Ordering::Relaxed)
            }
        },
        &cancel,
    );
    let original = read_parts(&dir.path().join("run.ckpt"));
    let tally = Tally::default();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    runner(32)
        .run(
            &(
                prop::collection::vec(json_edit(), 1..4),
                prop::option::weighted(0.3, tensor_edit()),
            ),
            |(edits, tensor)| {
                let (mut tensors, mut md) = original.clone();
                let meta: Value = serde_json::from_str(&md["promptclip_checkpoint"]).unwrap();
                md.insert(
                    "promptclip_checkpoint".into(),
                    edit_json(meta, &edits, &[]).to_string(),
                );
                if let Some(e) = &tensor {
                    apply_tensor_edit(&mut tensors, e);
                }
                let i = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let p = dir.path().join(format!("c{i}.ckpt"));
                write_parts(&p, &tensors, &md);
                let loaded = checkpoint::load(&p, &dev());
                let ok = loaded.is_ok();
                tally.check("checkpoint::load", loaded)?;
                if ok {
                    // Resume from it: refused, or the remaining epoch trains.
                    let resume = TrainConfig {
                        resume_from: Some(p.clone()),
                        checkpoint_path: None,
                        ..config.clone()
                    };
                    let r = fit(
                        clip,
                        &learner(),
                        &data,
                        &resume,
                        &mut |_| {},
                        &AtomicBool::new(false),
                    );
                    tally.check("resume", r)?;
                }
                std::fs::remove_file(&p).unwrap();
                Ok(())
            },
        )
        .unwrap();
    tally.report("checkpoints", cases(32) as usize);
}
