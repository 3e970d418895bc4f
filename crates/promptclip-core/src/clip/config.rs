//! CLIP configuration, as Hugging Face's `config.json` writes it, or inferred from the tensor
//! shapes of an OpenAI-named state dict (the way OpenAI's own `build_model` does it).
use crate::{Error, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// x * sigmoid(1.702 x): OpenAI's checkpoints.
    QuickGelu,
    /// Exact (erf) GELU: "gelu" in Hugging Face configs.
    Gelu,
    /// tanh approximation: "gelu_new" / "gelu_pytorch_tanh".
    GeluTanh,
    Relu,
}

impl Activation {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }
}

fn default_quick_gelu() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}

/// Text tower settings (Hugging Face `text_config`, with transformers' defaults for omitted keys).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "TextDefaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "TextDefaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "TextDefaults::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "TextDefaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "TextDefaults::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "TextDefaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
}

struct TextDefaults;
impl TextDefaults {
    fn vocab_size() -> usize {
        49408
    }
    fn hidden_size() -> usize {
        512
    }
    fn intermediate_size() -> usize {
        2048
    }
    fn num_hidden_layers() -> usize {
        12
    }
    fn num_attention_heads() -> usize {
        8
    }
    fn max_position_embeddings() -> usize {
        77
    }
}

/// Vision tower settings (Hugging Face `vision_config`).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "VisionDefaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "VisionDefaults::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "VisionDefaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "VisionDefaults::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "VisionDefaults::num_channels")]
    pub num_channels: usize,
    #[serde(default = "VisionDefaults::image_size")]
    pub image_size: usize,
    #[serde(default = "VisionDefaults::patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Set when the image tower is OpenAI's ModifiedResNet (RN50, RN101, ...), which only
    /// OpenAI-named checkpoints hold. The fields above then describe its attention pool: width
    /// 32 × the stem's, heads of 64, `image_size` = 32 × the final grid, `patch_size` 32 (each
    /// final position covers 32×32 pixels), the blocks of all stages as layers.
    #[serde(skip)]
    pub resnet: Option<ResNetShape>,
}

struct VisionDefaults;
impl VisionDefaults {
    fn hidden_size() -> usize {
        768
    }
    fn intermediate_size() -> usize {
        3072
    }
    fn num_hidden_layers() -> usize {
        12
    }
    fn num_attention_heads() -> usize {
        12
    }
    fn num_channels() -> usize {
        3
    }
    fn image_size() -> usize {
        224
    }
    fn patch_size() -> usize {
        32
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    #[serde(default = "ClipConfig::default_projection_dim")]
    pub projection_dim: usize,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    text_config: Option<serde_json::Value>,
    vision_config: Option<serde_json::Value>,
    projection_dim: Option<usize>,
}

impl ClipConfig {
    fn default_projection_dim() -> usize {
        512
    }

    /// Read a Hugging Face `config.json`. Checks that it describes a CLIP model (not SigLIP,
    /// Chinese-CLIP, ...), since those share key names but not architecture.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            // Read, but not text: a damaged file, not a failed read.
            std::io::ErrorKind::InvalidData => {
                Error::bad_config(path, format!("not UTF-8 text: {e}"))
            }
            _ => Error::io(path, e),
        })?;
        let raw: RawConfig = serde_json::from_str(&text)
            .map_err(|e| Error::bad_config(path, format!("not valid JSON: {e}")))?;
        match raw.model_type.as_deref() {
            Some("clip") | None => {}
            Some(other) => {
                return Err(Error::Unsupported(format!(
                    "{}: model_type `{other}` (architectures {:?}); promptclip loads CLIP models (model_type \"clip\")",
                    path.display(),
                    raw.architectures
                )))
            }
        }
        let text_config = raw
            .text_config
            .ok_or_else(|| Error::bad_config(path, "missing field `text_config`"))?;
        let vision_config = raw
            .vision_config
            .ok_or_else(|| Error::bad_config(path, "missing field `vision_config`"))?;
        let text_config: ClipTextConfig = serde_json::from_value(text_config)
            .map_err(|e| Error::bad_config(path, format!("text_config: {e}")))?;
        let vision_config: ClipVisionConfig = serde_json::from_value(vision_config)
            .map_err(|e| Error::bad_config(path, format!("vision_config: {e}")))?;
        let config = ClipConfig {
            text_config,
            vision_config,
            projection_dim: raw
                .projection_dim
                .unwrap_or_else(Self::default_projection_dim),
        };
        config
            .validate()
            .map_err(|msg| Error::bad_config(path, msg))?;
        Ok(config)
    }

    /// Consistency checks that would otherwise surface as obscure tensor errors.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.text_config;
        let v = &self.vision_config;
        if t.num_attention_heads == 0 || !t.hidden_size.is_multiple_of(t.num_attention_heads) {
            return Err(format!(
                "text_config.hidden_size {} is not divisible by num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if v.num_attention_heads == 0 || !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return Err(format!(
                "vision_config.hidden_size {} is not divisible by num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return Err(format!(
                "vision_config.image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        for (field, act) in [
            ("text_config.hidden_act", &t.hidden_act),
            ("vision_config.hidden_act", &v.hidden_act),
        ] {
            if Activation::from_name(act).is_none() {
                return Err(format!("{field} `{act}` is not supported (quick_gelu, gelu, gelu_new, gelu_pytorch_tanh, relu)"));
            }
        }
        Ok(())
    }
}

impl ClipTextConfig {
    pub fn activation(&self) -> Activation {
        Activation::from_name(&self.hidden_act).unwrap_or(Activation::QuickGelu)
    }
}

impl ClipVisionConfig {
    pub fn activation(&self) -> Activation {
        Activation::from_name(&self.hidden_act).unwrap_or(Activation::QuickGelu)
    }
    pub fn num_patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

/// The shape of a ModifiedResNet, as OpenAI's `build_model` infers it from the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResNetShape {
    /// Bottleneck blocks in each of the four stages: [3, 4, 6, 3] for RN50, [3, 4, 23, 3] for
    /// RN101, [4, 6, 10, 6] for RN50x4.
    pub layers: [usize; 4],
    /// The stem's output width: 64 for RN50 and RN101, 80 for RN50x4. The stages are 1, 2, 4 and
    /// 8 times as wide, times 4 after each block's expansion: the attention pool sees width × 32.
    pub width: usize,
}

impl ResNetShape {
    /// Channels reaching the attention pool (2048 for RN50).
    pub fn pool_width(&self) -> usize {
        self.width * 32
    }

    /// OpenAI's `vision_heads = vision_width * 32 // 64`: heads of 64.
    pub fn heads(&self) -> usize {
        self.pool_width() / 64
    }
}
