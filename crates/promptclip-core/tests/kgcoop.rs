//! KgCoOp against PyTorch (scripts/make_kgcoop_fixture.py: the official `trainers/kgcoop.py`
//! loss through transformers' text model): the frozen template features, the knowledge-guided
//! term, logits, the total loss and d(loss)/d(ctx), with w = 8 and w = 0.
mod common;
use candle_core::{DType, Tensor};
use common::{dev, fixtures, rel_err};
use promptclip_core::clip::l2_normalize;
use promptclip_core::methods::{CoopConfig, KgcoopConfig, KgcoopLearner, Learner, StepOutput};
use promptclip_core::Clip;
use std::collections::HashMap;

fn hf_clip() -> Clip {
    Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap()
}

fn fixture() -> (HashMap<String, Tensor>, HashMap<String, String>) {
    promptclip_core::files::read_safetensors(
        &fixtures().join("kgcoop/unified_end_words.safetensors"),
        &dev(),
    )
    .unwrap()
}

/// The fixture's learner: context from its init words, then set to the fixture's (perturbed)
/// context; `w` as given.
fn learner(
    clip: &Clip,
    t: &HashMap<String, Tensor>,
    md: &HashMap<String, String>,
    w: f64,
) -> KgcoopLearner {
    let names: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    let config = KgcoopConfig {
        context: CoopConfig {
            ctx_init: Some(md["init"].clone()),
            ..CoopConfig::default()
        },
        w,
        template: md["template"].clone(),
    };
    let l = KgcoopLearner::new(clip, &names, config).unwrap();
    assert_eq!(l.context.n_ctx().to_string(), md["n_ctx"]);
    assert_eq!(l.context.ctx.dims(), t["ctx"].dims());
    l.context.ctx.set(&t["ctx"]).unwrap();
    l
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn knowledge_term_loss_and_gradient_match_pytorch() {
    let clip = hf_clip();
    let (t, md) = fixture();
    let w: f64 = md["w"].parse().unwrap();
    assert_eq!(w, 8.0);
    let l = learner(&clip, &t, &md, w);
    let labels = t["labels"].to_dtype(DType::U32).unwrap();

    // The frozen anchor: the template's normalised text features.
    let e_anchor = rel_err(
        &l.clip_text,
        &l2_normalize(&t["clip_text_features"]).unwrap(),
    );
    // The learned prompts' text features and the knowledge-guided term (before w).
    let text = l.context.text_features(&clip, &l.context.buffers).unwrap();
    let e_text = rel_err(&text, &t["text_features"]);
    let kg = scalar(&l.knowledge_term(&text).unwrap()) / w;
    let kg_ref = scalar(&t["loss_kg"]);
    let e_kg = (kg - kg_ref).abs() / kg_ref.abs();
    // Logits (prediction is CoOp's), then the trainer's step: total loss and d(loss)/d(ctx).
    let logits = Learner::logits(&l, &clip, &t["image_features"]).unwrap();
    let e_logits = rel_err(&logits, &t["logits"]);
    let StepOutput {
        loss,
        logits: step_logits,
        grads,
    } = l
        .loss_and_grads(&clip, &t["image_features"], &labels)
        .unwrap();
    let e_step_logits = rel_err(&step_logits, &t["logits"]);
    let loss_ref = scalar(&t["loss"]);
    let e_loss = (loss as f64 - loss_ref).abs() / loss_ref.abs();
    assert_eq!(grads.len(), 1);
    let e_grad = rel_err(&grads[0], &t["grad_ctx"]);
    println!(
        "kgcoop w={w}: rel err anchor {e_anchor:.1e} text {e_text:.1e} loss_kg {e_kg:.1e} ({kg:.6e} vs {kg_ref:.6e}) logits {e_logits:.1e} step logits {e_step_logits:.1e} loss {e_loss:.1e} grad {e_grad:.1e}"
    );
    assert!(e_anchor < 1e-5, "template features rel err {e_anchor}");
    assert!(e_text < 1e-4, "text features rel err {e_text}");
    assert!(e_kg < 1e-4, "loss_kg rel err {e_kg}");
    assert!(
        e_logits < 1e-4 && e_step_logits < 1e-4,
        "logits rel err {e_logits} / {e_step_logits}"
    );
    assert!(e_loss < 1e-4, "loss rel err {e_loss}");
    assert!(e_grad < 1e-3, "grad_ctx rel err {e_grad}");
    // The term matters here: the total is not the cross-entropy alone.
    let ce_ref = scalar(&t["loss_ce"]);
    assert!((loss_ref - ce_ref - w * kg_ref).abs() < 1e-6 * loss_ref.abs());
    assert!((loss as f64 - ce_ref).abs() > 1e-3 * loss_ref.abs());
}

#[test]
fn with_w_zero_the_gradient_is_the_cross_entropys() {
    let clip = hf_clip();
    let (t, md) = fixture();
    let l = learner(&clip, &t, &md, 0.0);
    let labels = t["labels"].to_dtype(DType::U32).unwrap();
    let out = l
        .loss_and_grads(&clip, &t["image_features"], &labels)
        .unwrap();
    let ce_ref = scalar(&t["loss_ce"]);
    let e_loss = (out.loss as f64 - ce_ref).abs() / ce_ref.abs();
    let e_grad = rel_err(&out.grads[0], &t["grad_ctx_w0"]);
    // ... and differs from the w = 8 gradient by more than the tolerance.
    let e_vs_w8 = rel_err(&out.grads[0], &t["grad_ctx"]);
    println!("kgcoop w=0: rel err loss {e_loss:.1e} grad {e_grad:.1e} (vs the w=8 gradient {e_vs_w8:.1e})");
    assert!(e_loss < 1e-4, "loss_ce rel err {e_loss}");
    assert!(e_grad < 1e-3, "grad_ctx_w0 rel err {e_grad}");
    assert!(
        e_vs_w8 > 0.1,
        "the w = 0 gradient equals the w = 8 one ({e_vs_w8})"
    );
}

#[test]
fn at_the_template_context_the_knowledge_term_vanishes() {
    // The default KgCoOp context is "a photo of a" and the default template "a photo of a {}.":
    // the learned prompts start as the template itself, so the term and its pull are zero.
    let clip = hf_clip();
    let (t, md) = fixture();
    let names: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    let l = KgcoopLearner::new(&clip, &names, KgcoopConfig::default()).unwrap();
    assert_eq!(
        (l.w, l.template.as_str(), l.context.n_ctx()),
        (8.0, "a photo of a {}.", 4)
    );
    let text = l.context.text_features(&clip, &l.context.buffers).unwrap();
    let kg = scalar(&l.knowledge_term(&text).unwrap());
    println!("kgcoop knowledge term at the template context: {kg:.1e}");
    assert!(kg.abs() < 1e-5, "knowledge term {kg}");
    let w0 = KgcoopLearner::new(
        &clip,
        &names,
        KgcoopConfig {
            w: 0.0,
            ..KgcoopConfig::default()
        },
    )
    .unwrap();
    let labels = t["labels"].to_dtype(DType::U32).unwrap();
    let (a, b) = (
        l.loss_and_grads(&clip, &t["image_features"], &labels)
            .unwrap(),
        w0.loss_and_grads(&clip, &t["image_features"], &labels)
            .unwrap(),
    );
    let e = rel_err(&a.grads[0], &b.grads[0]);
    println!("kgcoop gradient w=8 vs w=0 at the template context: rel diff {e:.1e}");
    assert!(e < 1e-3, "rel diff {e}");
    // A negative or non-finite weight is refused by name.
    for w in [-1.0, f64::NAN] {
        let err = KgcoopLearner::new(
            &clip,
            &names,
            KgcoopConfig {
                w,
                ..KgcoopConfig::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("w must be"), "{err}");
    }
}
