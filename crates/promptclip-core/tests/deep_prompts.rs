//! Prompts inside both towers (VPT-deep, IVLP, MaPLe, PromptSRC): each tower's training pass and
//! its hand-written backward against candle's autograd through the composed ops and against
//! central finite differences, in f64.
mod common;
use candle_core::{DType, Tensor, Var};
use common::{dev, fixtures, rel_err};
use promptclip_core::clip::VisionPrompts;
use promptclip_core::Clip;

fn clip64() -> Clip {
    Clip::load_with_dtype(
        &fixtures().join("tiny-clip-openai.safetensors"),
        &dev(),
        DType::F64,
    )
    .unwrap()
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    (a * b)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn training_pass_equals_inference_and_its_gradients_equal_autograd_and_finite_differences() {
    let clip = clip64();
    let d = clip.config.vision_config.hidden_size;
    let s = clip.config.vision_config.image_size;
    let n = 3;
    let pixels = Tensor::randn(0f64, 1.0, (2, 3, s, s), &dev()).unwrap();
    let input = Tensor::randn(0f64, 0.5, (n, d), &dev()).unwrap();
    let deep = Tensor::randn(0f64, 0.5, (n, d), &dev()).unwrap();
    let target = Tensor::randn(0f64, 1.0, (2, clip.embed_dim()), &dev()).unwrap();
    let unprompted = clip.encode_image(&pixels).unwrap();
    // With deep prompts (the tiny tower's 2 blocks: one deep prompt) and with the input's only.
    for deep_prompts in [vec![deep.clone()], vec![]] {
        let prompts = VisionPrompts {
            input: &input,
            deep: &deep_prompts,
        };
        let f_inf = clip.encode_image_prompted(&pixels, prompts).unwrap();
        assert!(
            rel_err(&f_inf, &unprompted) > 1e-3,
            "the prompts change the features"
        );
        let (f, tape) = clip.image_features_train(&pixels, prompts).unwrap();
        let e = rel_err(&f, &f_inf);
        assert!(e < 1e-12, "training pass vs inference: {e}");
        let g = clip.image_features_backward(&tape, &target).unwrap();
        assert_eq!(g.deep.len(), deep_prompts.len());

        // Autograd through the composed ops (the tower's tracked path).
        let vi = Var::from_tensor(&input).unwrap();
        let vd: Vec<Var> = deep_prompts
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let vd_t: Vec<Tensor> = vd.iter().map(|v| v.as_tensor().clone()).collect();
        let f_ref = clip
            .encode_image_prompted(
                &pixels,
                VisionPrompts {
                    input: vi.as_tensor(),
                    deep: &vd_t,
                },
            )
            .unwrap();
        let grads = (&f_ref * &target)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let e = rel_err(&g.input, grads.get(vi.as_tensor()).unwrap());
        assert!(e < 1e-10, "input prompt gradient vs autograd: {e}");
        for (i, v) in vd.iter().enumerate() {
            let e = rel_err(&g.deep[i], grads.get(v.as_tensor()).unwrap());
            assert!(e < 1e-10, "deep prompt {i} gradient vs autograd: {e}");
        }

        // Central finite differences along a random direction of every prompt at once.
        let dir_in = Tensor::randn(0f64, 1.0, (n, d), &dev()).unwrap();
        let dir_deep: Vec<Tensor> = deep_prompts
            .iter()
            .map(|_| Tensor::randn(0f64, 1.0, (n, d), &dev()).unwrap())
            .collect();
        let loss_at = |h: f64| {
            let i = (&input + (&dir_in * h).unwrap()).unwrap();
            let dp: Vec<Tensor> = deep_prompts
                .iter()
                .zip(&dir_deep)
                .map(|(p, dd)| (p + (dd * h).unwrap()).unwrap())
                .collect();
            let f = clip
                .encode_image_prompted(
                    &pixels,
                    VisionPrompts {
                        input: &i,
                        deep: &dp,
                    },
                )
                .unwrap();
            dot(&f, &target)
        };
        let h = 1e-5;
        let fd = (loss_at(h) - loss_at(-h)) / (2.0 * h);
        let analytic = dot(&g.input, &dir_in)
            + g.deep
                .iter()
                .zip(&dir_deep)
                .map(|(g, dd)| dot(g, dd))
                .sum::<f64>();
        let e = (fd - analytic).abs() / analytic.abs();
        assert!(
            e < 1e-7,
            "directional derivative: analytic {analytic}, finite differences {fd} ({e})"
        );
    }
}

#[test]
fn bad_prompt_shapes_are_named() {
    let clip = clip64();
    let d = clip.config.vision_config.hidden_size;
    let s = clip.config.vision_config.image_size;
    let pixels = Tensor::zeros((1, 3, s, s), DType::F64, &dev()).unwrap();
    let p = Tensor::zeros((2, d), DType::F64, &dev()).unwrap();
    let wrong = Tensor::zeros((2, d + 1), DType::F64, &dev()).unwrap();
    let err = |prompts: VisionPrompts| {
        clip.encode_image_prompted(&pixels, prompts)
            .unwrap_err()
            .to_string()
    };
    assert!(err(VisionPrompts {
        input: &wrong,
        deep: &[]
    })
    .contains(&format!("takes (n, {d})")));
    assert!(err(VisionPrompts {
        input: &p,
        deep: std::slice::from_ref(&wrong)
    })
    .contains("deep vision prompt 1 has shape"));
    // The tiny tower has 2 blocks: at most 1 deep prompt.
    assert!(err(VisionPrompts {
        input: &p,
        deep: &[p.clone(), p.clone()]
    })
    .contains("2 deep vision prompts for an image tower of 2 blocks"));
}

#[test]
fn text_tower_deep_prompts_train_as_inference_with_gradients_equal_autograd_and_finite_differences()
{
    let clip = clip64();
    let d = clip.text.hidden_size();
    let (k, t, n) = (4, 12, 2);
    // K class prompts sharing SOS and the context (rows 0..3), each with its own tail.
    let head = Tensor::randn(0f64, 0.3, (1, 1 + n, d), &dev()).unwrap();
    let tails = Tensor::randn(0f64, 0.3, (k, t - 1 - n, d), &dev()).unwrap();
    let embeds = Tensor::cat(
        &[
            &head
                .broadcast_as((k, 1 + n, d))
                .unwrap()
                .contiguous()
                .unwrap(),
            &tails,
        ],
        1,
    )
    .unwrap();
    let eot = vec![6usize, 8, 5, 9];
    let deep = vec![Tensor::randn(0f64, 0.5, (n, d), &dev()).unwrap()];
    let target = Tensor::randn(0f64, 1.0, (k, clip.embed_dim()), &dev()).unwrap();
    let plain = clip.encode_text_embeds(&embeds, &eot).unwrap();
    let f_inf = clip
        .encode_text_embeds_prompted(&embeds, &eot, &deep)
        .unwrap();
    assert!(
        rel_err(&f_inf, &plain) > 1e-3,
        "the deep prompt changes the features"
    );

    // Autograd through the composed ops.
    let ve = Var::from_tensor(&embeds).unwrap();
    let vd = Var::from_tensor(&deep[0]).unwrap();
    let f_ref = clip
        .encode_text_embeds_prompted(ve.as_tensor(), &eot, &[vd.as_tensor().clone()])
        .unwrap();
    let grads = (&f_ref * &target)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g_embeds = grads.get(ve.as_tensor()).unwrap();
    let g_deep = grads.get(vd.as_tensor()).unwrap();

    // Shared prefix holding the deep rows (3 = SOS + context), none, and one that holds only part
    // of them (1: falls back to no sharing).
    for shared in [3usize, 0, 1] {
        let (f, tape) = clip
            .text_features_train_deep(&embeds, &eot, shared, k, &deep)
            .unwrap();
        let e = rel_err(&f, &f_inf);
        assert!(e < 1e-12, "shared {shared}: training pass vs inference {e}");
        let (ge, gd) = clip.text_features_backward_deep(&tape, &target).unwrap();
        // With a shared prefix its gradient lands at the group's first sequence (as autograd
        // through the shared forward): compare the sum over the prompts of the prefix rows.
        let e = if shared == 3 {
            let s = |g: &Tensor| g.narrow(1, 0, 3).unwrap().sum(0).unwrap();
            rel_err(&s(&ge), &s(g_embeds)).max(rel_err(
                &ge.narrow(1, 3, t - 3).unwrap(),
                &g_embeds.narrow(1, 3, t - 3).unwrap(),
            ))
        } else {
            rel_err(&ge, g_embeds)
        };
        assert!(
            e < 1e-10,
            "shared {shared}: embedding gradient vs autograd {e}"
        );
        let e = rel_err(&gd[0], g_deep);
        assert!(
            e < 1e-10,
            "shared {shared}: deep prompt gradient vs autograd {e}"
        );
    }

    // Central finite differences along a random direction of the deep prompt.
    let dir = Tensor::randn(0f64, 1.0, (n, d), &dev()).unwrap();
    let loss_at = |h: f64| {
        let p = (&deep[0] + (&dir * h).unwrap()).unwrap();
        dot(
            &clip
                .encode_text_embeds_prompted(&embeds, &eot, &[p])
                .unwrap(),
            &target,
        )
    };
    let h = 1e-5;
    let fd = (loss_at(h) - loss_at(-h)) / (2.0 * h);
    let analytic = dot(g_deep, &dir);
    let e = (fd - analytic).abs() / analytic.abs();
    assert!(
        e < 1e-7,
        "analytic {analytic}, finite differences {fd} ({e})"
    );

    // An EOT inside the deep rows is refused by name.
    let err = clip
        .encode_text_embeds_prompted(&embeds, &[2, 8, 5, 9], &deep)
        .unwrap_err()
        .to_string();
    assert!(err.contains("need every EOT after position 2"), "{err}");
}

/// A batch through the image tower in chunks (the learner's memory budget) gives the loss, the
/// logits and the gradients of one pass over the whole batch: every method's loss is a mean over
/// the images plus terms that do not depend on them, and the chunks are weighted by their share.
#[test]
fn chunked_image_tower_equals_one_pass_for_every_method_with_image_prompts() {
    use promptclip_core::methods::ivlp::{IvlpConfig, IvlpLearner};
    use promptclip_core::methods::maple::{MapleConfig, MapleLearner};
    use promptclip_core::methods::promptsrc::{PromptSrcConfig, PromptSrcLearner};
    use promptclip_core::methods::towers::image_chunk;
    use promptclip_core::methods::vpt::{VptConfig, VptLearner};
    use promptclip_core::methods::Learner;
    let clip = Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap();
    let (t, md) =
        promptclip_core::files::read_safetensors(&fixtures().join("ivlp/deep.safetensors"), &dev())
            .unwrap();
    let names: Vec<String> = serde_json::from_str(&md["class_names"]).unwrap();
    // Ten images in chunks of three: the last chunk is short.
    let (batch, labels) = common::pixel_batch(&clip, &t, 0, 10);
    let three = |n: usize| {
        let budget = clip.image_tape_bytes(n) * 3;
        assert_eq!(image_chunk(&clip, 10, n, budget), 3);
        budget
    };
    // Each learner with a budget for the whole batch, then for three images.
    let build = |chunked: bool| -> Vec<(&str, Box<dyn Learner>)> {
        let budget = |n: usize| if chunked { three(n) } else { usize::MAX };
        let mut vpt = VptLearner::new(&clip, &names, VptConfig::default()).unwrap();
        vpt.image_budget = budget(VptConfig::default().n_ctx);
        let mut ivlp = IvlpLearner::new(&clip, &names, IvlpConfig::default()).unwrap();
        ivlp.image_budget = budget(IvlpConfig::default().n_ctx_vision);
        let mut maple = MapleLearner::new(&clip, &names, MapleConfig::default()).unwrap();
        maple.image_budget = budget(MapleConfig::default().n_ctx);
        let mut src = PromptSrcLearner::new(&clip, &names, PromptSrcConfig::default()).unwrap();
        src.prompts.image_budget = budget(PromptSrcConfig::default().n_ctx_vision);
        vec![
            ("vpt", Box::new(vpt)),
            ("ivlp", Box::new(ivlp)),
            ("maple", Box::new(maple)),
            ("promptsrc", Box::new(src)),
        ]
    };
    for ((method, one), (_, chunks)) in build(false).into_iter().zip(build(true)) {
        let whole = one
            .batch_loss_and_grads(&clip, &batch, &labels, 1.0)
            .unwrap();
        let chunked = chunks
            .batch_loss_and_grads(&clip, &batch, &labels, 1.0)
            .unwrap();
        assert!(
            ((whole.loss - chunked.loss) / whole.loss).abs() < 1e-5,
            "{method}: loss {} vs {}",
            chunked.loss,
            whole.loss
        );
        assert!(
            rel_err(&chunked.logits, &whole.logits) < 1e-5,
            "{method} logits"
        );
        for ((name, _), (a, b)) in one
            .vars()
            .iter()
            .zip(chunked.grads.iter().zip(&whole.grads))
        {
            let e = rel_err(a, b);
            println!("{method} {name}: chunked gradient rel_err {e:.1e}");
            assert!(e < 1e-5, "{method} gradient of {name}: {e}");
        }
    }
}
