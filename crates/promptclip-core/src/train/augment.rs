//! Training augmentation of the CoOp recipe: RandomResizedCrop(224, scale=(0.08, 1),
//! ratio=(3/4, 4/3), bicubic) and a horizontal flip with p = 0.5, as torchvision does them,
//! driven by our seeded RNG so runs repeat exactly.
use crate::preprocess::{normalize_into, resize_rgb, ImageConfig};
use crate::rng::Rng;
use crate::Result;
use image::RgbImage;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugmentConfig {
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
    pub flip_p: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_p: 0.5,
        }
    }
}

/// torchvision's RandomResizedCrop.get_params: (top, left, height, width).
pub fn random_resized_crop_box(
    width: u32,
    height: u32,
    cfg: &AugmentConfig,
    rng: &mut Rng,
) -> (u32, u32, u32, u32) {
    let (w, h) = (width as f64, height as f64);
    let area = w * h;
    let (log_lo, log_hi) = (cfg.ratio.0.ln(), cfg.ratio.1.ln());
    for _ in 0..10 {
        let target = area * (cfg.scale.0 + rng.uniform() * (cfg.scale.1 - cfg.scale.0));
        let aspect = (log_lo + rng.uniform() * (log_hi - log_lo)).exp();
        let cw = (target * aspect).sqrt().round();
        let ch = (target / aspect).sqrt().round();
        if cw > 0.0 && ch > 0.0 && cw <= w && ch <= h {
            let top = rng.below((h - ch) as usize + 1) as u32;
            let left = rng.below((w - cw) as usize + 1) as u32;
            return (top, left, ch as u32, cw as u32);
        }
    }
    // Fallback: central crop with the ratio clamped into range.
    let in_ratio = w / h;
    let (cw, ch) = if in_ratio < cfg.ratio.0 {
        (w, (w / cfg.ratio.0).round())
    } else if in_ratio > cfg.ratio.1 {
        ((h * cfg.ratio.1).round(), h)
    } else {
        (w, h)
    };
    (
        ((h - ch) / 2.0) as u32,
        ((w - cw) / 2.0) as u32,
        ch as u32,
        cw as u32,
    )
}

/// The augmented 8-bit crop (S x S) of one decoded image.
pub fn augment_crop(
    img: &RgbImage,
    img_cfg: &ImageConfig,
    cfg: &AugmentConfig,
    rng: &mut Rng,
) -> Result<RgbImage> {
    let (top, left, h, w) = random_resized_crop_box(img.width(), img.height(), cfg, rng);
    let crop = image::imageops::crop_imm(img, left, top, w, h).to_image();
    let mut resized = resize_rgb(&crop, img_cfg.crop, img_cfg.crop)?;
    if rng.uniform() < cfg.flip_p {
        image::imageops::flip_horizontal_in_place(&mut resized);
    }
    Ok(resized)
}

/// Augment one decoded image into normalised CHW floats appended to `out`.
pub fn augment_into(
    img: &RgbImage,
    img_cfg: &ImageConfig,
    cfg: &AugmentConfig,
    rng: &mut Rng,
    out: &mut Vec<f32>,
) -> Result<()> {
    normalize_into(&augment_crop(img, img_cfg, cfg, rng)?, img_cfg, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_boxes_stay_inside_and_follow_scale_and_ratio() {
        let cfg = AugmentConfig::default();
        let mut rng = Rng::new(1);
        let (w, h) = (320u32, 240u32);
        let mut areas = vec![];
        for _ in 0..2000 {
            let (top, left, ch, cw) = random_resized_crop_box(w, h, &cfg, &mut rng);
            assert!(ch >= 1 && cw >= 1 && top + ch <= h && left + cw <= w);
            let frac = (ch * cw) as f64 / (w * h) as f64;
            let ratio = cw as f64 / ch as f64;
            // Rounding to whole pixels can step just outside the continuous ranges.
            assert!((0.07..=1.0).contains(&frac), "area fraction {frac}");
            assert!((0.70..=1.45).contains(&ratio), "aspect {ratio}");
            areas.push(frac);
        }
        let mean = areas.iter().sum::<f64>() / areas.len() as f64;
        // Accepted samples of U(0.08, 1) area, biased low by rejections of tall/wide boxes.
        assert!((0.35..0.6).contains(&mean), "mean area fraction {mean}");
        // Same seed, same boxes.
        assert_eq!(
            random_resized_crop_box(w, h, &cfg, &mut Rng::new(9)),
            random_resized_crop_box(w, h, &cfg, &mut Rng::new(9))
        );
        // A 1-pixel-high strip cannot fit the ratio range: the central fallback crop is used.
        let (top, left, ch, cw) = random_resized_crop_box(400, 1, &cfg, &mut Rng::new(3));
        assert_eq!((top, ch), (0, 1));
        assert!(cw <= 2 && left + cw <= 400);
    }

    #[test]
    fn flips_about_half_the_time() {
        let img = RgbImage::from_fn(64, 48, |x, _| image::Rgb([x as u8 * 4, 0, 0]));
        let img_cfg = ImageConfig::clip(32);
        let cfg = AugmentConfig {
            scale: (1.0, 1.0),
            ratio: (64.0 / 48.0, 64.0 / 48.0),
            flip_p: 0.5,
        };
        let mut rng = Rng::new(4);
        let mut flipped = 0;
        for _ in 0..200 {
            let mut out = vec![];
            augment_into(&img, &img_cfg, &cfg, &mut rng, &mut out).unwrap();
            // Red channel increases left to right unless flipped.
            if out[0] > out[31] {
                flipped += 1;
            }
        }
        assert!((70..130).contains(&flipped), "{flipped} of 200 flipped");
    }
}
