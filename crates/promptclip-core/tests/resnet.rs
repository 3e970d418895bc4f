//! CLIP with OpenAI's ModifiedResNet image tower (RN50, RN101, ...) against open_clip
//! (scripts/make_resnet_fixtures.py): a tiny ResNet CLIP whose file open_clip wrote, and RN50 at
//! full size, whose weights both sides compute from the same counter-based generator; image and
//! text embeddings, logits, each stage of the trunk, and CoOp's loss and gradient. Then every
//! method on a ResNet, and the errors for a tower that is neither a ViT nor a ResNet.
mod common;
use candle_core::{DType, Tensor};
use common::{colours, dev, fixtures, rel_err};
use promptclip_core::clip::{ResNetShape, VisionTower};
use promptclip_core::methods::coop::{CoopConfig, CoopContext};
use promptclip_core::methods::{self, Learner, Runtime};
use promptclip_core::train::{fit, fit_with_validation, TrainConfig};
use promptclip_core::Clip;
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

const TOL: f32 = 1e-4;

fn tiny() -> Clip {
    Clip::load(&fixtures().join("resnet/tiny-rn.safetensors"), &dev()).unwrap()
}

fn reference(name: &str) -> (HashMap<String, Tensor>, HashMap<String, String>) {
    promptclip_core::files::read_safetensors(&fixtures().join("resnet").join(name), &dev()).unwrap()
}

fn eot(t: &Tensor) -> Vec<usize> {
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|x| x as usize)
        .collect()
}

/// Embeddings, logits and each stage of the trunk against the reference file.
fn check_forward(clip: &Clip, r: &HashMap<String, Tensor>, what: &str) {
    let pixels = &r["pixel_values"];
    let VisionTower::ResNet(resnet) = &clip.vision else {
        panic!("{what}: loaded as a ViT")
    };
    let stages = resnet.stages(pixels).unwrap();
    for (i, ours) in stages.iter().enumerate() {
        let name = if i == 0 {
            "stem".to_string()
        } else {
            format!("layer{i}")
        };
        // Ours are channels-last (B, H, W, C); PyTorch's (B, C, H, W).
        let ours = ours.permute((0, 3, 1, 2)).unwrap();
        // The tiny model's reference holds whole maps; RN50's, to stay small, each map's mean
        // over the positions and its top-left and bottom-right 4×4 corners.
        let pairs = if r.contains_key(&name) {
            vec![(ours, r[&name].clone())]
        } else {
            let (h, w) = (ours.dim(2).unwrap(), ours.dim(3).unwrap());
            let corner =
                |y: usize, x: usize| ours.narrow(2, y, 4).unwrap().narrow(3, x, 4).unwrap();
            vec![
                (
                    ours.mean((2, 3)).unwrap(),
                    r[&format!("{name}.mean")].clone(),
                ),
                (corner(0, 0), r[&format!("{name}.tl")].clone()),
                (corner(h - 4, w - 4), r[&format!("{name}.br")].clone()),
            ]
        };
        for (ours, theirs) in pairs {
            let e = rel_err(&ours, &theirs);
            println!("{what}: {name} rel err {e:.1e}");
            assert!(e < TOL, "{what}: {name} rel err {e}");
        }
    }
    let image = clip.encode_image(pixels).unwrap();
    let text = clip
        .encode_text_ids(&r["input_ids"], &eot(&r["eot_index"]))
        .unwrap();
    let logits = clip.logits(&image, &text).unwrap();
    let (ei, et, el) = (
        rel_err(&image, &r["image_embeds"]),
        rel_err(&text, &r["text_embeds"]),
        rel_err(&logits, &r["logits_per_image"]),
    );
    println!("{what}: rel err image {ei:.1e} text {et:.1e} logits {el:.1e}");
    assert!(ei < TOL && et < TOL && el < TOL, "{what}: forward differs");
}

/// CoOp (unified context, class token at the end) on image features this model computed:
/// features, text features, logits, loss and d(loss)/d(ctx) against the reference file.
fn check_coop(clip: &Clip, t: &HashMap<String, Tensor>, md: &HashMap<String, String>, what: &str) {
    if let Some(pixels) = t.get("image_pixels") {
        let e = rel_err(&clip.encode_image(pixels).unwrap(), &t["image_features"]);
        println!("{what}: CoOp image features rel err {e:.1e}");
        assert!(e < TOL, "{what}: image features rel err {e}");
    }
    let names: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    let n_ctx: usize = md["n_ctx"].parse().unwrap();
    let learner = CoopContext::new(
        clip,
        &names,
        CoopConfig {
            n_ctx: Some(n_ctx),
            ..CoopConfig::default()
        },
    )
    .unwrap();
    learner.ctx.set(&t["ctx"]).unwrap();
    assert_eq!(learner.buffers.eot, eot(&t["eot_index"]), "{what}: EOT");
    let prompts = learner
        .assemble(learner.ctx.as_tensor(), &learner.buffers)
        .unwrap();
    assert_eq!(rel_err(&prompts, &t["prompts"]), 0.0, "{what}: prompts");
    let labels = t["labels"].to_dtype(DType::U32).unwrap();
    let logits = Learner::logits(&learner, clip, &t["image_features"]).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
    let grads = loss.backward().unwrap();
    let g = grads
        .get(learner.ctx.as_tensor())
        .expect("gradient reaches ctx");
    let text = learner.text_features(clip, &learner.buffers).unwrap();
    let (et, el, eloss, eg) = (
        rel_err(&text, &t["text_features"]),
        rel_err(&logits, &t["logits"]),
        rel_err(&loss, &t["loss"]),
        rel_err(g, &t["grad_ctx"]),
    );
    println!("{what}: CoOp rel err text {et:.1e} logits {el:.1e} loss {eloss:.1e} grad {eg:.1e}");
    assert!(
        et < TOL && el < TOL && eloss < TOL && eg < TOL,
        "{what}: CoOp differs"
    );
}

#[test]
fn tiny_resnet_clip_equals_open_clip() {
    let clip = tiny();
    let v = &clip.config.vision_config;
    assert_eq!(
        v.resnet,
        Some(ResNetShape {
            layers: [1, 2, 1, 1],
            width: 16
        })
    );
    assert_eq!(
        (v.image_size, v.num_attention_heads, clip.embed_dim()),
        (64, 8, 24)
    );
    let (r, _) = reference("tiny-rn-reference.safetensors");
    check_forward(&clip, &r, "tiny");
    let (t, md) = reference("tiny-rn-coop.safetensors");
    check_coop(&clip, &t, &md, "tiny");
}

/// SplitMix64's output for `state`: the generator the RN50 fixture's weights come from (see
/// scripts/make_resnet_fixtures.py).
fn splitmix(state: u64) -> u64 {
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The tensor `name` of the manifest: element i is c + h·(2u − 1), u from SplitMix64 at
/// fnv1a(name) + (i + 1)·γ, computed in f64 and rounded to f32 once.
fn hashed(name: &str, n: usize, cq: i64, hq: i64) -> Vec<f32> {
    let seed = fnv1a(name);
    let (c, h) = (cq as f64 / 16_777_216.0, hq as f64 / 16_777_216.0);
    (0..n as u64)
        .map(|i| {
            let z = splitmix(seed.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
            let u = (z >> 40) as f64 / 16_777_216.0;
            (c + h * (2.0 * u - 1.0)) as f32
        })
        .collect()
}

/// RN50's weights: the manifest's generated tensors and the stored BatchNorm statistics, written
/// as one OpenAI-named safetensors file.
fn write_rn50(dir: &Path) -> std::path::PathBuf {
    let manifest: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("resnet/rn50-weights.json")).unwrap(),
    )
    .unwrap();
    let cpu = candle_core::Device::Cpu;
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(fixtures().join("resnet/rn50-stored.safetensors"), &cpu)
            .unwrap();
    for m in &manifest {
        let name = m["name"].as_str().unwrap();
        let shape: Vec<usize> = serde_json::from_value(m["shape"].clone()).unwrap();
        let n = shape.iter().product();
        let v = hashed(
            name,
            n,
            m["center_q24"].as_i64().unwrap(),
            m["halfwidth_q24"].as_i64().unwrap(),
        );
        tensors.insert(name.into(), Tensor::from_vec(v, shape, &cpu).unwrap());
    }
    let path = dir.join("rn50.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    path
}

#[test]
fn rn50_equals_open_clip() {
    let dir = tempfile::tempdir().unwrap();
    let clip = Clip::load(&write_rn50(dir.path()), &dev()).unwrap();
    let v = &clip.config.vision_config;
    assert_eq!(
        v.resnet,
        Some(ResNetShape {
            layers: [3, 4, 6, 3],
            width: 64
        })
    );
    assert_eq!(
        (v.image_size, v.num_attention_heads, clip.embed_dim()),
        (224, 32, 1024)
    );
    let (r, _) = reference("rn50-reference.safetensors");
    check_forward(&clip, &r, "RN50");
    let (t, md) = reference("rn50-coop.safetensors");
    check_coop(&clip, &t, &md, "RN50");
}

/// RN50x4, x16 and x64 differ from RN50 only in shapes (stage depths, width, resolution, heads):
/// a random ResNet of yet other shapes, with an odd final grid (3×3 at 96 pixels), loads with
/// the shapes its weights imply and encodes.
#[test]
fn a_resnet_of_other_shapes_loads_with_the_shapes_of_its_weights() {
    use promptclip_core::clip::random::{write_random_openai_clip, RandomClipSpec};
    let spec = RandomClipSpec {
        embed_dim: 40,
        image_size: 96,
        vision_width: 24,
        text_width: 64,
        text_layers: 1,
        resnet_layers: Some([2, 1, 3, 1]),
        ..RandomClipSpec::RN50
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rn-other.safetensors");
    write_random_openai_clip(&path, &spec, DType::F32, 5).unwrap();
    let clip = Clip::load(&path, &dev()).unwrap();
    let v = &clip.config.vision_config;
    assert_eq!(
        v.resnet,
        Some(ResNetShape {
            layers: [2, 1, 3, 1],
            width: 24
        })
    );
    // Heads of 64 over the attention pool's 32 × 24 = 768 channels, as OpenAI's build_model.
    assert_eq!(
        (v.image_size, v.hidden_size, v.num_attention_heads),
        (96, 768, 12)
    );
    let pixels = Tensor::randn(0f32, 1.0, (2, 3, 96, 96), &dev()).unwrap();
    let f = clip.encode_image(&pixels).unwrap();
    assert_eq!(f.dims(), &[2, 40]);
    assert!(promptclip_core::clip::is_finite(&f).unwrap());
    // Another resolution than the weights' is refused, naming both.
    let err = clip
        .encode_image(&Tensor::zeros((1, 3, 64, 64), DType::F32, &dev()).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("(1, 3, 96, 96)"), "{err}");
}

#[test]
fn every_method_trains_and_scores_on_a_resnet() {
    let clip = tiny();
    let (names, train) = colours(4, 3, 0..3);
    let (_, val) = colours(2, 4, 0..3);
    let config = TrainConfig {
        epochs: 2,
        batch_size: 4,
        seed: 1,
        ..TrainConfig::default()
    };
    let cancel = AtomicBool::new(false);
    let feats = clip
        .encode_image(&Tensor::randn(0f32, 1.0, (3, 3, 64, 64), &dev()).unwrap())
        .unwrap();
    // Zero-shot: the class embeddings of a template, and probabilities for the images.
    let text = promptclip_core::zeroshot::class_embeddings(
        &clip,
        &names,
        &["a photo of a {}.".to_string()],
    )
    .unwrap();
    let p = promptclip_core::zeroshot::probabilities(&clip, &feats, &text).unwrap();
    assert_eq!(p.dims(), &[3, 3]);
    for m in ["coop", "cocoop", "kgcoop", "linear-probe"] {
        let l = methods::create(&clip, m, &names, json!({}), Runtime::default()).unwrap();
        let s = fit_with_validation(
            &clip,
            l.as_ref(),
            &train,
            Some(&val),
            &config,
            &mut |_| {},
            &cancel,
        )
        .unwrap_or_else(|e| panic!("{m}: {e}"));
        assert!(
            s.epoch_loss.iter().all(|x| x.is_finite()),
            "{m}: losses {:?}",
            s.epoch_loss
        );
        let logits = l.scorer(&clip, None).unwrap().logits(&feats).unwrap();
        assert_eq!(logits.dims(), &[3, 3], "{m}");
        assert!(promptclip_core::clip::is_finite(&logits).unwrap(), "{m}");
    }
    // CoOp's context moves: the gradient reaches it through the ResNet's features.
    let coop = methods::create(
        &clip,
        "coop",
        &names,
        json!({ "seed": 2 }),
        Runtime::default(),
    )
    .unwrap();
    let before = coop.vars()[0].1.as_tensor().copy().unwrap();
    fit(&clip, coop.as_ref(), &train, &config, &mut |_| {}, &cancel).unwrap();
    assert!(rel_err(coop.vars()[0].1.as_tensor(), &before) > 0.0);
}

/// The tiny ResNet's tensors, edited, written to a new file and loaded.
fn load_edited(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> promptclip_core::Error {
    let cpu = candle_core::Device::Cpu;
    let mut t = candle_core::safetensors::load(fixtures().join("resnet/tiny-rn.safetensors"), &cpu)
        .unwrap();
    edit(&mut t);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edited.safetensors");
    candle_core::safetensors::save(&t, &path).unwrap();
    Clip::load(&path, &dev()).unwrap_err()
}

#[test]
fn an_image_tower_that_is_neither_vit_nor_resnet_is_refused_naming_the_tensors() {
    // No attention pool and no transformer: neither layout.
    let err = load_edited(|t| t.retain(|k, _| !k.starts_with("visual.attnpool.")));
    assert_eq!(err.code(), "E_UNSUPPORTED", "{err}");
    let msg = err.to_string();
    for name in [
        "edited.safetensors",
        "visual.transformer.resblocks.0.attn.in_proj_weight",
        "visual.class_embedding",
        "visual.layer1.0.conv1.weight",
        "visual.attnpool.positional_embedding` (missing)",
    ] {
        assert!(msg.contains(name), "`{name}` not in: {msg}");
    }
    // A ResNet with a tensor missing: that tensor is named.
    let err = load_edited(|t| {
        t.remove("visual.layer2.1.bn2.running_var");
    });
    assert_eq!(err.code(), "E_MISSING_TENSOR", "{err}");
    assert!(
        err.to_string().contains("visual.layer2.1.bn2.running_var"),
        "{err}"
    );
    // A stage without blocks.
    let err = load_edited(|t| t.retain(|k, _| !k.starts_with("visual.layer3.")));
    assert!(
        err.to_string().contains("visual.layer3.0.conv1.weight"),
        "{err}"
    );
    // A variance below zero would put NaN in the folded weights.
    let err = load_edited(|t| {
        let v = &t["visual.bn1.running_var"];
        let neg = (v.to_dtype(DType::F32).unwrap() * -1.0).unwrap();
        t.insert(
            "visual.bn1.running_var".into(),
            neg.to_dtype(v.dtype()).unwrap(),
        );
    });
    assert!(err.to_string().contains("visual.bn1.running_var"), "{err}");
    // The attention pool's grid is not square.
    let err = load_edited(|t| {
        let p = &t["visual.attnpool.positional_embedding"];
        t.insert(
            "visual.attnpool.positional_embedding".into(),
            p.narrow(0, 0, 4).unwrap(),
        );
    });
    assert!(err.to_string().contains("square grid"), "{err}");
}
