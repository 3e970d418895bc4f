//! Property tests of the image reader and the preprocessor config (issue 11): random bytes, valid
//! PNG / JPEG / GIF / BMP / WebP files with random bytes overwritten, sizes spliced in and tails cut
//! off, random raw pixels, and random `preprocessor_config.json` contents. Every case must end in
//! Ok or a coded error, without a panic, within a time and memory bound.
//!
//! `cargo test` runs 256 cases per property (a few seconds). A longer run:
//!
//! ```sh
//! PROPTEST_CASES=100000 cargo test --release -p promptclip-core \
//!     --target x86_64-unknown-linux-gnu --test image_fuzz -- --nocapture
//! ```
//!
//! Each property prints how many cases it ran. An abort (allocation failure) would end the test
//! process itself, which `cargo test` reports as a crash.
use promptclip_core::preprocess::{preprocess_within, ImageConfig, ImageLimits, ImageSource};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 4 megapixels: the decoder may allocate at most 32 MB for one image.
const FUZZ_LIMITS: ImageLimits = ImageLimits {
    max_pixels: 4_000_000,
    max_file_bytes: 1 << 20,
    accept_truncated: false,
};
const SLOW: Duration = Duration::from_secs(5);

fn runner() -> TestRunner {
    // Config::default() takes PROPTEST_CASES from the environment (256 when unset).
    TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    })
}

fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

const FORMATS: [image::ImageFormat; 5] = [
    image::ImageFormat::Png,
    image::ImageFormat::Jpeg,
    image::ImageFormat::Gif,
    image::ImageFormat::Bmp,
    image::ImageFormat::WebP,
];

fn encoded(format: usize, w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x as u8).wrapping_mul(seed), y as u8, seed ^ x as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, FORMATS[format]).unwrap();
    out.into_inner()
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Overwrite a byte (position as a fraction of the length, so it lands inside any file).
    Byte(f64, u8),
    /// Write a 32-bit value in either byte order: headers' widths and heights.
    Size(f64, u32, bool),
    /// Keep only this fraction of the file.
    Cut(f64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let size = prop_oneof![
        Just(0u32),
        Just(1),
        Just(0xFFFF),
        Just(0x7FFF_FFFF),
        Just(u32::MAX),
        Just(20_000),
        Just(2_000_000),
        any::<u32>(),
    ];
    prop_oneof![
        4 => (0.0..1.0f64, any::<u8>()).prop_map(|(p, b)| Mutation::Byte(p, b)),
        2 => (0.0..1.0f64, size, any::<bool>()).prop_map(|(p, v, be)| Mutation::Size(p, v, be)),
        1 => (0.0..1.0f64).prop_map(Mutation::Cut),
    ]
}

fn apply(mut data: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let at = |p: f64, len: usize| ((p * len as f64) as usize).min(len.saturating_sub(1));
        match *m {
            Mutation::Byte(p, b) if !data.is_empty() => {
                let i = at(p, data.len());
                data[i] = b;
            }
            Mutation::Size(p, v, be) if data.len() >= 4 => {
                let i = at(p, data.len() - 3);
                let bytes = if be { v.to_be_bytes() } else { v.to_le_bytes() };
                data[i..i + 4].copy_from_slice(&bytes);
            }
            Mutation::Cut(p) => data.truncate((p * data.len() as f64) as usize),
            _ => {}
        }
    }
    data
}

/// Any outcome but a panic, an uncoded error, a wrong-sized result or a slow case; true when the
/// image was read.
fn check(src: &ImageSource, cfg: &ImageConfig) -> Result<bool, TestCaseError> {
    let t = Instant::now();
    let r = preprocess_within(src, cfg, &FUZZ_LIMITS);
    prop_assert!(t.elapsed() < SLOW, "took {:?}", t.elapsed());
    match r {
        Ok(v) => {
            prop_assert_eq!(v.len(), 3 * (cfg.crop * cfg.crop) as usize);
            prop_assert!(v.iter().all(|x| x.is_finite()));
            Ok(true)
        }
        Err(e) => {
            prop_assert!(
                ["E_IMAGE_DECODE", "E_INVALID_ARGUMENT"].contains(&e.code()),
                "{}: {e}",
                e.code()
            );
            prop_assert!(e.to_string().contains(&src.name()), "{e}");
            Ok(false)
        }
    }
}

fn run<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<bool, TestCaseError>,
) {
    let (cases, read) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let result = runner().run(&strategy, |v| {
        cases.fetch_add(1, Ordering::Relaxed);
        if test(v)? {
            read.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    eprintln!(
        "{name}: {} cases run, {} read, the rest refused; peak RSS {} MB",
        cases.load(Ordering::Relaxed),
        read.load(Ordering::Relaxed),
        peak_rss() >> 20
    );
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    // The property must have been exercised: every case reached the check, and both outcomes
    // occurred (a strategy that only ever fails early, or only ever succeeds, proves little).
    let (cases, read) = (cases.into_inner(), read.into_inner());
    assert!(
        cases >= runner().config().cases as usize,
        "{name}: only {cases} cases ran"
    );
    assert!(read > 0, "{name}: no case was read");
    assert!(read < cases, "{name}: no case was refused");
    // Both properties of this binary may run at once; neither may take more than a few decodes.
    assert!(peak_rss() < 1 << 30, "peak RSS {} MB", peak_rss() >> 20);
}

#[test]
fn mutated_and_random_images_end_in_ok_or_a_coded_error() {
    let cfg = ImageConfig::clip(32);
    let mutated = (
        0..FORMATS.len(),
        1..48u32,
        1..48u32,
        any::<u8>(),
        prop::collection::vec(mutation(), 0..6),
    )
        .prop_map(|(f, w, h, seed, ms)| apply(encoded(f, w, h, seed), &ms));
    // Random bytes behind each format's magic, so that they reach its decoder.
    let magics: [&[u8]; 6] = [
        b"\x89PNG\r\n\x1a\n",
        b"\xFF\xD8\xFF",
        b"GIF89a",
        b"BM",
        b"RIFF\0\0\0\0WEBPVP8 ",
        b"",
    ];
    let random =
        (0..magics.len(), prop::collection::vec(any::<u8>(), 0..512)).prop_map(move |(m, tail)| {
            let mut v = magics[m].to_vec();
            v.extend(tail);
            v
        });
    let bytes = prop_oneof![3 => mutated, 1 => random];
    run("encoded images", bytes, |data| {
        check(
            &ImageSource::Bytes {
                name: "fuzz".into(),
                data: Arc::from(data),
            },
            &cfg,
        )
    });
}

#[test]
fn random_raw_pixels_end_in_ok_or_a_coded_error() {
    let cfg = ImageConfig::clip(32);
    let side =
        prop_oneof![6 => 0..64u32, 1 => Just(2_000_000), 1 => Just(u32::MAX), 1 => any::<u32>()];
    let raw = (side.clone(), side, 0..6u8, any::<bool>(), 0..64usize).prop_map(
        |(w, h, c, exact, extra)| {
            // Mostly the right number of bytes when that is small, so that pixels get decoded.
            let n = (w as u128 * h as u128 * c as u128) as usize;
            let len = if exact && n <= 64 * 64 * 4 { n } else { extra };
            ImageSource::Pixels {
                name: format!("raw {w}x{h}x{c}"),
                width: w,
                height: h,
                channels: c,
                data: Arc::from(vec![7u8; len]),
            }
        },
    );
    run("raw pixels", raw, |src| check(&src, &cfg));
}

/// JSON values near what a `preprocessor_config.json` holds, and far from it.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::{json, Value};
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (0..5000u64).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        Just(Value::from(4_294_967_296u64 + 224)),
        any::<i64>().prop_map(Value::from),
        (-1e6..1e6f64).prop_map(Value::from),
        Just(json!(1e300)),
        Just(json!(0.5)),
        "[a-z0-9]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("shortest_edge".to_string()),
                    Just("height".to_string()),
                    Just("width".to_string()),
                    "[a-z]{1,4}".prop_map(String::from),
                ],
                inner,
                0..3,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn random_preprocessor_configs_are_read_or_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("preprocessor_config.json");
    let keys = prop_oneof![
        Just("size"),
        Just("crop_size"),
        Just("image_mean"),
        Just("image_std"),
        Just("do_resize"),
    ];
    let config = (
        prop::collection::btree_map(keys, json_value(), 0..5),
        prop::option::of(0.0..1.0f64),
    )
        .prop_map(|(m, cut)| {
            let obj: serde_json::Map<_, _> = m.into_iter().map(|(k, v)| (k.into(), v)).collect();
            let mut text = serde_json::Value::Object(obj).to_string();
            // Sometimes not JSON at all.
            if let Some(c) = cut {
                text.truncate((c * text.len() as f64) as usize);
            }
            text
        });
    let image = ImageSource::Pixels {
        name: "strip".into(),
        width: 300,
        height: 20,
        channels: 3,
        data: Arc::from(vec![9u8; 300 * 20 * 3]),
    };
    run("preprocessor configs", config, |text| {
        std::fs::write(&path, &text).unwrap();
        match ImageConfig::from_dir(dir.path(), 32) {
            Ok(cfg) => {
                prop_assert_eq!(cfg.crop, 32);
                prop_assert!((32..=4096).contains(&cfg.shortest_edge), "{:?}", cfg);
                prop_assert!(cfg.mean.iter().all(|x| x.is_finite()), "{:?}", cfg);
                prop_assert!(
                    cfg.std.iter().all(|x| x.is_finite() && *x > 0.0),
                    "{:?}",
                    cfg
                );
                // Whatever it says, an image through it ends in Ok or a coded error.
                return check(&image, &cfg);
            }
            Err(e) => {
                prop_assert_eq!(e.code(), "E_BAD_CONFIG", "{}", e);
                prop_assert!(e.to_string().contains("preprocessor_config.json"), "{}", e);
            }
        }
        Ok(false)
    });
}
