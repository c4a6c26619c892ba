//! Image embeddings with a configurable ONNX vision encoder (CLIP-style
//! preprocessing: shortest side resized bicubically to `image_size`, centre
//! crop, RGB scaled to [0, 1], normalised with `mean`/`std`, NCHW f32).

use std::io::Cursor;
use std::path::PathBuf;

use image::imageops::FilterType;
use image::{ImageReader, Limits, RgbImage};
use ort::value::{Tensor, ValueType};

use super::runtime::{SessionPool, build_session, ort_environment};
use super::{ModelError, l2_normalize};

/// CLIP's per-channel RGB mean.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel RGB standard deviation.
// The values as published with CLIP (some digits are beyond f32 precision).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Largest accepted image side, in pixels (decompression-bomb guard).
const MAX_SIDE: u32 = 16_384;
/// Largest allocation the decoder may make.
const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

/// Configuration of [`ImageModel`].
#[derive(Debug, Clone)]
pub struct ImageModelConfig {
    /// The ONNX vision encoder.
    pub model_path: PathBuf,
    /// Name of its `[batch, 3, H, W]` f32 input (CLIP: `pixel_values`).
    pub input_name: String,
    /// Name of its `[batch, dim]` f32 output (CLIP: `image_embeds`).
    pub output_name: String,
    /// Square input size (CLIP: 224).
    pub image_size: u32,
    /// Per-channel RGB mean (after scaling to [0, 1]).
    pub mean: [f32; 3],
    /// Per-channel RGB standard deviation.
    pub std: [f32; 3],
    /// Expected embedding dimension (CLIP ViT-B/32: 512).
    pub output_dim: usize,
    /// `libonnxruntime.so` to load; `None` = `$ORT_DYLIB_PATH` (or the
    /// library already loaded in this process).
    pub ort_dylib: Option<PathBuf>,
    /// Intra-op threads (default 1).
    pub intra_threads: usize,
}

impl ImageModelConfig {
    /// CLIP defaults for the model at `model_path`.
    pub fn clip(model_path: impl Into<PathBuf>) -> Self {
        Self {
            model_path: model_path.into(),
            input_name: "pixel_values".into(),
            output_name: "image_embeds".into(),
            image_size: 224,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            output_dim: 512,
            ort_dylib: None,
            intra_threads: 1,
        }
    }
}

impl Default for ImageModelConfig {
    fn default() -> Self {
        Self::clip(PathBuf::new())
    }
}

/// An ONNX image embedder. `Send + Sync`; calls are serialised on one session.
pub struct ImageModel {
    pool: SessionPool,
    config: ImageModelConfig,
}

impl std::fmt::Debug for ImageModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageModel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ImageModel {
    /// Loads the model and checks its input/output names and shapes.
    pub fn load(config: &ImageModelConfig) -> Result<Self, ModelError> {
        if config.image_size == 0 || config.image_size > 4096 {
            return Err(ModelError::Config(format!(
                "image_size {} out of range",
                config.image_size
            )));
        }
        if config.output_dim == 0 {
            return Err(ModelError::Config("output_dim must be positive".into()));
        }
        if config.std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || config.mean.iter().any(|m| !m.is_finite())
        {
            return Err(ModelError::Config(
                "mean/std must be finite and std non-zero".into(),
            ));
        }
        if !config.model_path.is_file() {
            return Err(ModelError::MissingFile {
                path: config.model_path.clone(),
            });
        }
        let env = ort_environment(config.ort_dylib.as_deref())?;
        let session = build_session(&env, &config.model_path, config.intra_threads)?;
        let bad = |reason: String| ModelError::BadModel {
            path: config.model_path.clone(),
            reason,
        };
        let input = session
            .inputs()
            .iter()
            .find(|i| i.name() == config.input_name)
            .ok_or_else(|| bad(format!("no input named `{}`", config.input_name)))?;
        if let ValueType::Tensor { shape, .. } = input.dtype() {
            let dims: &[i64] = shape;
            let s = i64::from(config.image_size);
            let ok = dims.len() == 4
                && (dims[1] == 3 || dims[1] < 0)
                && (dims[2] == s || dims[2] < 0)
                && (dims[3] == s || dims[3] < 0);
            if !ok {
                return Err(bad(format!(
                    "input `{}` has shape {dims:?}, expected [batch, 3, {s}, {s}]",
                    config.input_name
                )));
            }
        }
        if session.inputs().len() != 1 {
            return Err(bad("vision models must have exactly one input".into()));
        }
        let output = session
            .outputs()
            .iter()
            .find(|o| o.name() == config.output_name)
            .ok_or_else(|| bad(format!("no output named `{}`", config.output_name)))?;
        if let ValueType::Tensor { shape, .. } = output.dtype() {
            let dims: &[i64] = shape;
            let ok = dims.len() == 2 && (dims[1] == config.output_dim as i64 || dims[1] < 0);
            if !ok {
                return Err(bad(format!(
                    "output `{}` has shape {dims:?}, expected [batch, {}]",
                    config.output_name, config.output_dim
                )));
            }
        }
        Ok(Self {
            pool: SessionPool::new(vec![session]),
            config: config.clone(),
        })
    }

    /// Embedding dimension.
    pub fn dim(&self) -> usize {
        self.config.output_dim
    }

    /// Decodes a PNG or JPEG image, preprocesses it and returns its unit-length
    /// embedding. Undecodable bytes give [`ModelError::InvalidImage`].
    pub fn embed_image(&self, bytes: &[u8]) -> Result<Vec<f32>, ModelError> {
        let rgb = decode_rgb(bytes)?;
        let pixels = preprocess(
            &rgb,
            self.config.image_size,
            self.config.mean,
            self.config.std,
        );
        let s = self.config.image_size as usize;
        let tensor = Tensor::from_array(([1usize, 3, s, s], pixels))
            .map_err(ModelError::ort("creating the image tensor"))?;
        let mut session = self.pool.get();
        let outputs = session
            .run(vec![(self.config.input_name.as_str(), tensor)])
            .map_err(ModelError::ort("running the vision model"))?;
        let output = outputs.get(&self.config.output_name).ok_or_else(|| {
            ModelError::Output(format!("no output `{}`", self.config.output_name))
        })?;
        let (shape, data) = output
            .try_extract_tensor::<f32>()
            .map_err(ModelError::ort("reading the vision model output"))?;
        let dims: &[i64] = shape;
        if dims != [1, self.config.output_dim as i64] {
            return Err(ModelError::Output(format!(
                "vision model output shape {dims:?}, expected [1, {}]",
                self.config.output_dim
            )));
        }
        if data.iter().any(|x| !x.is_finite()) {
            return Err(ModelError::Output(
                "vision model output is not finite".into(),
            ));
        }
        let mut v = data.to_vec();
        l2_normalize(&mut v);
        Ok(v)
    }
}

/// Decodes PNG/JPEG bytes to 8-bit RGB (alpha dropped, like PIL's `convert("RGB")`).
fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, ModelError> {
    if bytes.is_empty() {
        return Err(ModelError::InvalidImage("empty input".into()));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ModelError::InvalidImage(e.to_string()))?;
    if reader.format().is_none() {
        return Err(ModelError::InvalidImage("not a PNG or JPEG image".into()));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| ModelError::InvalidImage(e.to_string()))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(ModelError::InvalidImage("image has no pixels".into()));
    }
    Ok(img.to_rgb8())
}

/// CLIP preprocessing: resize the shortest side to `size` (bicubic), centre
/// crop `size`×`size`, scale to [0, 1], normalise, lay out as CHW.
fn preprocess(img: &RgbImage, size: u32, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let (w, h) = img.dimensions();
    // Like torchvision's Resize(int): short side = size, long side scaled (truncated).
    let (nw, nh) = if w <= h {
        (
            size,
            ((u64::from(h) * u64::from(size)) / u64::from(w)).max(u64::from(size)) as u32,
        )
    } else {
        (
            ((u64::from(w) * u64::from(size)) / u64::from(h)).max(u64::from(size)) as u32,
            size,
        )
    };
    let resized = if (nw, nh) == (w, h) {
        img.clone()
    } else {
        image::imageops::resize(img, nw, nh, FilterType::CatmullRom)
    };
    // Centre crop (round like torchvision's CenterCrop).
    let left = ((f64::from(nw - size)) / 2.0).round() as u32;
    let top = ((f64::from(nh - size)) / 2.0).round() as u32;
    let plane = (size as usize) * (size as usize);
    let mut out = vec![0f32; 3 * plane];
    for y in 0..size {
        for x in 0..size {
            let p = resized.get_pixel(left + x, top + y);
            let idx = (y as usize) * (size as usize) + x as usize;
            for c in 0..3 {
                out[c * plane + idx] = (f32::from(p[c]) / 255.0 - mean[c]) / std[c];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use image::Rgb;

    #[test]
    fn preprocess_normalises_and_crops() {
        // A uniform image stays uniform through resize + crop.
        let img = RgbImage::from_pixel(300, 200, Rgb([255, 0, 128]));
        let px = preprocess(&img, 224, CLIP_MEAN, CLIP_STD);
        assert_eq!(px.len(), 3 * 224 * 224);
        let plane = 224 * 224;
        let want = [
            (1.0 - CLIP_MEAN[0]) / CLIP_STD[0],
            (0.0 - CLIP_MEAN[1]) / CLIP_STD[1],
            (128.0 / 255.0 - CLIP_MEAN[2]) / CLIP_STD[2],
        ];
        for (c, w) in want.iter().enumerate() {
            for v in &px[c * plane..(c + 1) * plane] {
                assert!((v - w).abs() < 1e-4, "channel {c}: {v} vs {w}");
            }
        }
    }

    #[test]
    fn preprocess_keeps_the_centre() {
        // Left third red, middle third green, right third blue: after the
        // centre crop of a wide image, the middle column must be green.
        let img = RgbImage::from_fn(600, 200, |x, _| match x / 200 {
            0 => Rgb([255, 0, 0]),
            1 => Rgb([0, 255, 0]),
            _ => Rgb([0, 0, 255]),
        });
        let px = preprocess(&img, 224, [0.0; 3], [1.0; 3]);
        let plane = 224 * 224;
        let centre = 112 * 224 + 112;
        assert!(px[plane + centre] > 0.99, "green {}", px[plane + centre]);
        assert!(px[centre] < 0.01 && px[2 * plane + centre] < 0.01);
    }

    #[test]
    fn undecodable_bytes_are_errors() {
        for bad in [&b""[..], b"hello", b"\x89PNG\r\n\x1a\n", b"\xFF\xD8\xFF"] {
            assert!(matches!(decode_rgb(bad), Err(ModelError::InvalidImage(_))));
        }
    }
}
