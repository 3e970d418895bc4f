//! The method seam: the registry and its option parsing, recipes and training options, learner
//! files of every method (round trip, non-finite parameters refused), resume across methods.
mod common;
use candle_core::Tensor;
use common::{colours, dev, fixtures};
use promptclip_core::methods::catalogue::{self, OptionKind, RecipeFor};
use promptclip_core::methods::io::{load, save};
use promptclip_core::methods::{self, recipe_of, BoxedLearner, Recipe, Runtime};
use promptclip_core::train::{fit, TrainConfig, TrainOptions};
use promptclip_core::{Clip, Error};
use serde_json::json;
use std::sync::atomic::AtomicBool;

fn hf_clip() -> Clip {
    Clip::load(&fixtures().join("tiny-clip-hf"), &dev()).unwrap()
}

fn names() -> Vec<String> {
    ["dog", "paper_crane", "golden retriever"]
        .map(String::from)
        .to_vec()
}

const PROMPT_METHODS: [&str; 3] = ["coop", "cocoop", "kgcoop"];

fn create(
    clip: &Clip,
    method: &str,
    options: serde_json::Value,
) -> promptclip_core::Result<BoxedLearner> {
    methods::create(clip, method, &names(), options, Runtime::default())
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

fn invalid(r: promptclip_core::Result<impl std::fmt::Debug>) -> String {
    let err = r.unwrap_err();
    assert_eq!(err.code(), "E_INVALID_ARGUMENT", "{err}");
    err.to_string()
}

#[test]
fn the_registry_builds_each_method_and_names_an_unknown_one() {
    let clip = hf_clip();
    let registered: Vec<&str> = methods::METHODS.iter().map(|s| s.name).collect();
    for m in PROMPT_METHODS {
        assert!(
            registered.contains(&m),
            "{m} is not registered: {registered:?}"
        );
        let l = create(&clip, m, json!({})).unwrap();
        let meta = l.meta();
        assert_eq!(meta.method, m);
        // Labels keep the caller's names (underscore and all).
        assert_eq!(meta.class_names, names());
        assert_eq!(l.class_names(), names().as_slice());
        // Null options are the defaults.
        assert_eq!(
            create(&clip, m, serde_json::Value::Null).unwrap().meta(),
            meta
        );
    }
    let msg = invalid(create(&clip, "cocop", json!({})));
    assert!(msg.contains("method `cocop`"), "{msg}");
    for m in PROMPT_METHODS {
        assert!(msg.contains(m), "{msg}");
    }
}

#[test]
fn bad_options_name_the_field() {
    let clip = hf_clip();
    for m in PROMPT_METHODS {
        // An unknown field (a misspelt nCtx), by name, with the known ones listed.
        let msg = invalid(create(&clip, m, json!({ "nctx": 4 })));
        assert!(
            msg.contains(&format!("{m} options"))
                && msg.contains("unknown field `nctx`")
                && msg.contains("nCtx"),
            "{m}: {msg}"
        );
        // A wrong type, at its field.
        let msg = invalid(create(&clip, m, json!({ "nCtx": "four" })));
        assert!(msg.contains("options: nCtx: invalid type"), "{m}: {msg}");
        // An unknown class-token position.
        let msg = invalid(create(&clip, m, json!({ "position": "top" })));
        assert!(
            msg.contains("options: position: ") && msg.contains("`top`"),
            "{m}: {msg}"
        );
        // Values of the right type that make no learner.
        let msg = invalid(create(&clip, m, json!({ "nCtx": 0 })));
        assert!(msg.contains("nCtx"), "{m}: {msg}");
    }
    let msg = invalid(create(&clip, "cocoop", json!({ "metaNetRatio": "x" })));
    assert!(msg.contains("options: metaNetRatio: invalid type"), "{msg}");
    let msg = invalid(create(&clip, "cocoop", json!({ "metaNetRatio": 0 })));
    assert!(msg.contains("metaNetRatio"), "{msg}");
    let msg = invalid(create(&clip, "cocoop", json!({ "classSpecific": true })));
    assert!(msg.contains("classSpecific"), "{msg}");
    let msg = invalid(create(&clip, "kgcoop", json!({ "w": "heavy" })));
    assert!(msg.contains("options: w: invalid type"), "{msg}");
    // Fields of one method are unknown to another.
    let msg = invalid(create(&clip, "coop", json!({ "metaNetRatio": 4 })));
    assert!(msg.contains("unknown field `metaNetRatio`"), "{msg}");
    let msg = invalid(create(&clip, "cocoop", json!({ "template": "a {}." })));
    assert!(msg.contains("unknown field `template`"), "{msg}");
    // Options that are not an object (an array would otherwise be read positionally: nCtx 4).
    let msg = invalid(create(&clip, "coop", json!([4])));
    assert!(msg.contains("coop options must be an object"), "{msg}");
    let msg = invalid(TrainOptions::from_json(json!([3])));
    assert!(msg.contains("train options must be an object"), "{msg}");
}

#[test]
fn train_options_name_the_field() {
    let msg = invalid(TrainOptions::from_json(json!({ "epoch": 3 })));
    assert!(
        msg.contains("unknown field `epoch`") && msg.contains("epochs"),
        "{msg}"
    );
    let msg = invalid(TrainOptions::from_json(json!({ "epochs": "ten" })));
    assert!(msg.contains("epochs: invalid type"), "{msg}");
    let msg = invalid(TrainOptions::from_json(json!({ "schedule": "linear" })));
    assert!(
        msg.contains("schedule: ") && msg.contains("`linear`"),
        "{msg}"
    );
    let msg = invalid(TrainOptions::from_json(json!({ "batchSize": -1 })));
    assert!(
        msg.contains("batchSize: must be a whole number") && msg.contains("got -1"),
        "{msg}"
    );
    // Parsed, but no valid config: refused when resolved, by name.
    let zero = TrainOptions::from_json(json!({ "epochs": 0 })).unwrap();
    let msg = invalid(zero.resolve(&Recipe::default()));
    assert!(msg.contains("epochs must be at least 1"), "{msg}");
    let msg = invalid(
        TrainOptions::from_json(json!({ "lr": -0.1 }))
            .unwrap()
            .resolve(&Recipe::default()),
    );
    assert!(msg.contains("lr must be a positive number"), "{msg}");
}

#[test]
fn recipes_are_the_papers_and_options_override_them_field_by_field() {
    let clip = hf_clip();
    let plain = RecipeFor::default();
    let coop = recipe_of(create(&clip, "coop", json!({})).unwrap().as_ref(), plain).unwrap();
    let cocoop = recipe_of(create(&clip, "cocoop", json!({})).unwrap().as_ref(), plain).unwrap();
    assert_eq!(
        coop,
        Recipe {
            epochs: 50,
            batch_size: 32,
            lr: 0.002,
            ..Recipe::default()
        }
    );
    assert_eq!(
        cocoop,
        Recipe {
            epochs: 10,
            batch_size: 1,
            lr: 0.002,
            ..Recipe::default()
        }
    );
    for recipe in [coop, cocoop] {
        let c = TrainOptions::default().resolve(&recipe).unwrap();
        assert_eq!(
            (c.epochs, c.batch_size, c.sgd.lr),
            (recipe.epochs, recipe.batch_size, recipe.lr)
        );
        // The shared recipe underneath: momentum 0.9, weight decay 5e-4, one warmup epoch.
        assert_eq!(
            (c.sgd.momentum, c.sgd.weight_decay, c.warmup_epochs),
            (0.9, 5e-4, 1)
        );
        let from_json = TrainOptions::from_json(json!({}))
            .unwrap()
            .resolve(&recipe)
            .unwrap();
        assert_eq!(
            (from_json.epochs, from_json.batch_size, from_json.sgd.lr),
            (recipe.epochs, recipe.batch_size, recipe.lr)
        );
        let c = TrainConfig::for_recipe(&recipe);
        assert_eq!(
            (c.epochs, c.batch_size, c.sgd.lr),
            (recipe.epochs, recipe.batch_size, recipe.lr)
        );
    }
    // One field given: that field changes, the rest stay the method's.
    let c = TrainOptions::from_json(json!({ "epochs": 3, "augment": false }))
        .unwrap()
        .resolve(&cocoop)
        .unwrap();
    assert_eq!(
        (c.epochs, c.batch_size, c.sgd.lr, c.augment),
        (3, 1, 0.002, false)
    );
}

#[test]
fn learner_files_round_trip_for_every_method() {
    let clip = hf_clip();
    let dir = tempfile::tempdir().unwrap();
    let feats = Tensor::randn(0f32, 1.0, (4, clip.embed_dim()), &dev()).unwrap();
    let new_names: Vec<String> = ["cat", "paper crane", "x", "sea turtle"]
        .map(String::from)
        .to_vec();
    for (m, options) in [
        (
            "coop",
            json!({ "nCtx": 3, "position": "middle", "seed": 5 }),
        ),
        ("cocoop", json!({ "metaNetRatio": 4, "seed": 3 })),
        (
            "kgcoop",
            json!({ "w": 2.5, "template": "a blurry photo of a {}." }),
        ),
    ] {
        let l = create(&clip, m, options.clone()).unwrap();
        // Parameters that are not the initial ones: a load that re-initialised would be caught.
        for (_, v) in l.vars() {
            v.set(&((v.as_tensor() * 1.5).unwrap() + 0.01).unwrap())
                .unwrap();
        }
        let path = dir.path().join(format!("{m}.safetensors"));
        save(&path, l.as_ref(), &clip).unwrap();
        let (loaded, meta) = load(
            &path,
            &clip,
            Runtime {
                memory_budget_mb: 5,
            },
        )
        .unwrap();
        assert_eq!(meta, l.meta(), "{m}");
        assert_eq!(loaded.meta(), l.meta(), "{m}");
        for (key, value) in options.as_object().unwrap() {
            assert_eq!(&meta.options[key], value, "{m}: option {key}");
        }
        let (a, b) = (loaded.vars(), l.vars());
        assert_eq!(a.len(), b.len());
        for ((name, x), (name_b, y)) in a.iter().zip(&b) {
            assert_eq!(name, name_b);
            assert_eq!(bits(x.as_tensor()), bits(y.as_tensor()), "{m}: {name}");
        }
        // Both score images alike, on their own classes and on new ones.
        for class_names in [None, Some(new_names.as_slice())] {
            let (p, q) = (
                loaded
                    .scorer(&clip, class_names)
                    .unwrap()
                    .logits(&feats)
                    .unwrap(),
                l.scorer(&clip, class_names)
                    .unwrap()
                    .logits(&feats)
                    .unwrap(),
            );
            assert_eq!(bits(&p), bits(&q), "{m}: scores for {class_names:?}");
        }
    }
}

#[test]
fn non_finite_parameters_are_not_saved() {
    let clip = hf_clip();
    let dir = tempfile::tempdir().unwrap();
    for (m, bad) in [
        ("coop", "ctx"),
        ("cocoop", "meta.linear2.bias"),
        ("cocoop", "ctx"),
        ("kgcoop", "ctx"),
    ] {
        let l = create(&clip, m, json!({})).unwrap();
        let (_, var) = l.vars().into_iter().find(|(n, _)| n == bad).unwrap();
        let mut values = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let i = values.len() / 2;
        values[i] = f32::NAN;
        var.set(&Tensor::from_vec(values, var.dims(), &dev()).unwrap())
            .unwrap();
        let path = dir.path().join(format!("{m}-{bad}.safetensors"));
        let err = save(&path, l.as_ref(), &clip).unwrap_err();
        assert!(matches!(err, Error::NonFiniteParams(_)), "{m}: {err:?}");
        assert_eq!(err.code(), "E_NON_FINITE_PARAMS");
        assert!(err.to_string().contains(&format!("`{bad}`")), "{m}: {err}");
        assert!(!path.exists(), "{m}: a file was written");
        // An infinity is refused as well.
        var.set(&Tensor::full(f32::INFINITY, var.dims(), &dev()).unwrap())
            .unwrap();
        assert_eq!(
            save(&path, l.as_ref(), &clip).unwrap_err().code(),
            "E_NON_FINITE_PARAMS"
        );
    }
}

#[test]
fn resume_refuses_a_checkpoint_of_another_method_with_the_same_shapes() {
    // CoOp from "a photo of a" and KgCoOp (whose default context is those words) both train one
    // (4, d) context: only the learner description tells the checkpoints apart.
    let clip = hf_clip();
    let (class_names, data) = colours(1, 5, 0..3);
    let make = |m: &str, options: serde_json::Value| {
        methods::create(&clip, m, &class_names, options, Runtime::default()).unwrap()
    };
    let coop_options = json!({ "ctxInit": "a photo of a" });
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("coop.ckpt");
    let config = TrainConfig {
        epochs: 2,
        batch_size: 3,
        augment: false,
        checkpoint_path: Some(ck.clone()),
        ..TrainConfig::default()
    };
    let coop = make("coop", coop_options.clone());
    let kgcoop = make("kgcoop", json!({}));
    assert_eq!(coop.meta().params, kgcoop.meta().params);
    fit(
        &clip,
        coop.as_ref(),
        &data,
        &config,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    let resume = TrainConfig {
        resume_from: Some(ck.clone()),
        ..config
    };
    let err = fit(
        &clip,
        kgcoop.as_ref(),
        &data,
        &resume,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("different learner: method was coop, this run has kgcoop"),
        "{err}"
    );
    // The same method with other options is refused too; the same learner resumes.
    let other = make("coop", json!({ "ctxInit": "a photo of a", "seed": 2 }));
    let err = fit(
        &clip,
        other.as_ref(),
        &data,
        &resume,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("seed was 1, this run has 2"),
        "{err}"
    );
    let same = make("coop", coop_options);
    let s = fit(
        &clip,
        same.as_ref(),
        &data,
        &resume,
        &mut |_| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    // The checkpoint is the finished run's: nothing is left to do, and the record still holds
    // both epochs' losses (from the checkpoint).
    assert_eq!((s.start_epoch, s.epoch_loss.len()), (2, 2));
    assert_eq!(
        bits(same.vars()[0].1.as_tensor()),
        bits(coop.vars()[0].1.as_tensor())
    );
}

#[test]
fn linear_probe_through_the_trainer_is_the_official_search_on_center_crop_features() {
    use promptclip_core::logreg::{search_c, SearchConfig};
    use promptclip_core::train::fit_with_validation;
    let clip = hf_clip();
    let (names, train) = colours(4, 5, 0..3);
    let (_, val) = colours(2, 6, 0..3);
    let probe =
        methods::create(&clip, "linear-probe", &names, json!({}), Runtime::default()).unwrap();
    let spec = methods::spec("linear-probe").unwrap();
    assert_eq!(spec.fitting, methods::catalogue::Fitting::FeatureFit);
    let config = TrainConfig::default();
    let cancel = AtomicBool::new(false);
    let err = fit(&clip, probe.as_ref(), &train, &config, &mut |_| {}, &cancel).unwrap_err();
    assert!(err.to_string().contains("validation set"), "{err}");
    let s = fit_with_validation(
        &clip,
        probe.as_ref(),
        &train,
        Some(&val),
        &config,
        &mut |_| {},
        &cancel,
    )
    .unwrap();
    // The same search, run directly on the features the official feat_extractor would write.
    let f = |d: &promptclip_core::train::LabelledImages, what: &str| {
        promptclip_core::features::encode_all(&clip, &d.sources, what).unwrap()
    };
    let (model, search) = search_c(
        &f(&train, "training image"),
        &train.labels,
        &f(&val, "validation image"),
        &val.labels,
        3,
        &SearchConfig::default(),
    )
    .unwrap();
    let details = s.details.unwrap();
    assert_eq!(details["c"].as_f64().unwrap(), search.c);
    assert_eq!(details["rounds"].as_array().unwrap().len(), 8);
    let vars = probe.vars();
    let w = model.weight.to_dtype(candle_core::DType::F32).unwrap();
    assert_eq!(bits(vars[0].1.as_tensor()), bits(&w));
    // Its own classes only.
    let other: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    assert!(probe.scorer(&clip, Some(&other)).is_err());
    assert!(probe.scorer(&clip, Some(&names)).is_ok());
}

/// The catalogue documents each method's options as its config has them: every documented option
/// is a field of the config with a default of the documented type, every option a user can set
/// that the config has is documented (but the internal ones named here), and creating a learner
/// with a value of each documented option works.
#[test]
fn the_catalogue_documents_each_config_field_with_its_type_and_default() {
    let clip = hf_clip();
    let names = vec!["dog".to_string(), "cat".to_string()];
    // Fields of the shared context config that a method refuses or never reads.
    let undocumented: &[(&str, &str)] = &[("cocoop", "classSpecific")];
    let entries = catalogue::catalogue();
    assert_eq!(
        entries.iter().map(|e| e.name).collect::<Vec<_>>(),
        [
            "linear-probe",
            "coop",
            "cocoop",
            "kgcoop",
            "clip-adapter",
            "tip-adapter",
            "tip-adapter-f",
            "vpt",
            "ivlp",
            "maple",
            "promptsrc",
            "clip-lora"
        ]
    );
    for e in &entries {
        let defaults = e.defaults.as_object().unwrap();
        let documented: Vec<&str> = e.options.iter().map(|o| o.name).collect();
        for key in defaults.keys() {
            assert!(
                documented.contains(&key.as_str())
                    || undocumented.contains(&(e.name, key.as_str())),
                "{}: option {key} is not in the catalogue",
                e.name
            );
        }
        for o in e.options {
            let d = defaults.get(o.name).unwrap_or_else(|| {
                panic!("{}: {} is documented but not an option", e.name, o.name)
            });
            let ok = match o.kind {
                OptionKind::Integer { .. } => d.is_null() || d.is_u64(),
                OptionKind::Number { .. } => d.is_null() || d.is_f64(),
                OptionKind::Boolean => d.is_boolean(),
                OptionKind::String => d.is_null() || d.is_string(),
                OptionKind::StringList => {
                    d.is_null()
                        || d.as_array()
                            .is_some_and(|a| a.iter().all(|s| s.is_string()))
                }
                OptionKind::IntegerList { .. } => {
                    d.is_null() || d.as_array().is_some_and(|a| a.iter().all(|s| s.is_u64()))
                }
                OptionKind::Choice { choices } => choices.contains(&d.as_str().unwrap()),
            };
            assert!(
                ok,
                "{}: {} has default {d}, not a {:?}",
                e.name, o.name, o.kind
            );
            // A value of the documented type is taken by the method.
            let value = match o.kind {
                OptionKind::Integer { min } => json!(min.max(2)),
                OptionKind::Number { .. } => json!(0.5),
                OptionKind::Boolean => json!(true),
                OptionKind::String if o.name == "template" => json!("a drawing of a {}."),
                OptionKind::String => json!("a photo of a"),
                OptionKind::StringList if o.name == "matrices" => json!(["q", "v"]),
                OptionKind::StringList => json!(["a drawing of a {}.", "a photo of a {}."]),
                OptionKind::IntegerList { min } => json!([min.max(1)]),
                OptionKind::Choice { choices } => json!(choices[choices.len() - 1]),
            };
            let learner = methods::create(
                &clip,
                e.name,
                &names,
                json!({ o.name: value }),
                Runtime::default(),
            )
            .unwrap_or_else(|err| panic!("{} with {}: {value}: {err}", e.name, o.name));
            if o.name != "nCtx" {
                assert_eq!(
                    learner.meta().options[o.name],
                    value,
                    "{}: {}",
                    e.name,
                    o.name
                );
            }
            assert!(o.flag.is_none_or(|f| f.starts_with("--")), "{}", o.name);
        }
        assert_eq!(e.seeded, defaults.contains_key("seed"));
    }
    let json = serde_json::to_value(&entries).unwrap();
    assert_eq!(json[1]["options"][3]["type"], "choice");
    assert_eq!(
        json[1]["options"][3]["choices"],
        json!(["end", "middle", "front"])
    );
    assert_eq!(json[0]["usesValidation"], true);
    assert_eq!(json[0]["classes"], "own-classes");
}

/// CoOp's epochs by shots (the official scripts/coop/main.sh and its configs), in the core.
#[test]
fn recipes_follow_the_protocol_shots_and_dataset() {
    let epochs = |method: &str, shots: Option<usize>, dataset: Option<&str>| {
        catalogue::recipe(method, RecipeFor { shots, dataset })
            .unwrap()
            .epochs
    };
    let by_shots: Vec<usize> = [1, 2, 4, 8, 16]
        .iter()
        .map(|&k| epochs("coop", Some(k), None))
        .collect();
    assert_eq!(by_shots, [50, 100, 100, 200, 200]);
    assert_eq!(epochs("coop", Some(16), Some("imagenet")), 50);
    assert_eq!(epochs("coop", None, None), 50);
    assert_eq!(epochs("cocoop", Some(16), None), 10);
    assert!(catalogue::recipe("no-such-method", RecipeFor::default()).is_err());
    // The prompts-in-the-encoders methods: their official configs, whatever the shots.
    for (method, epochs, lr) in [
        ("vpt", 5, 0.0025),
        ("ivlp", 5, 0.0035),
        ("maple", 5, 0.0035),
        ("promptsrc", 20, 0.0025),
    ] {
        let r = catalogue::recipe(method, RecipeFor::default()).unwrap();
        assert_eq!((r.epochs, r.batch_size, r.lr), (epochs, 4, lr), "{method}");
    }
    // The training options carry the protocol's shots to the recipe.
    let options = TrainOptions::from_json(json!({ "shots": 8, "dataset": "oxford_pets" })).unwrap();
    assert_eq!(
        catalogue::recipe("coop", options.recipe_for())
            .unwrap()
            .epochs,
        200
    );
}
