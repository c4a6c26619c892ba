//! Real-model tests for crates/embedder's inference code (no mocks).
//!
//! Needs the files made by `make model` (scripts/model/prepare.sh). Locations:
//! `EM_MODEL_DIR`, `ORT_DYLIB_PATH`, `EM_TEST_VISION_MODEL`, defaulting to
//! `<workspace>/.cache/...`. Missing files make the tests FAIL (not skip).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use embedder::model::{
    ImageModel, ImageModelConfig, MINILM_DIM, ModelError, TextModel, TextModelConfig,
};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn required(var: &str, default: PathBuf) -> PathBuf {
    let path = std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or(default);
    assert!(
        path.exists(),
        "{} not found (from ${var} or its default): run `make model` \
         (scripts/model/prepare.sh) first, or set {var}",
        path.display()
    );
    path
}

fn model_dir() -> PathBuf {
    let dir = required(
        "EM_MODEL_DIR",
        workspace_root().join(".cache/models/all-MiniLM-L6-v2"),
    );
    for f in ["model.onnx", "tokenizer.json"] {
        assert!(
            dir.join(f).is_file(),
            "{}/{f} missing: run `make model`",
            dir.display()
        );
    }
    dir
}

fn ort_dylib() -> PathBuf {
    required(
        "ORT_DYLIB_PATH",
        workspace_root().join(".cache/onnxruntime/lib/libonnxruntime.so"),
    )
}

fn vision_model_path() -> PathBuf {
    required(
        "EM_TEST_VISION_MODEL",
        workspace_root().join(".cache/models/test-vision/model.onnx"),
    )
}

fn text_config() -> TextModelConfig {
    TextModelConfig {
        model_dir: model_dir(),
        ort_dylib: Some(ort_dylib()),
        intra_threads: 1,
        max_tokens: 256,
        sessions: 2,
    }
}

fn text_model() -> &'static TextModel {
    static MODEL: OnceLock<TextModel> = OnceLock::new();
    MODEL.get_or_init(|| TextModel::load(&text_config()).expect("load text model"))
}

fn vision_config() -> ImageModelConfig {
    ImageModelConfig {
        ort_dylib: Some(ort_dylib()),
        ..ImageModelConfig::clip(vision_model_path())
    }
}

fn image_model() -> &'static ImageModel {
    static MODEL: OnceLock<ImageModel> = OnceLock::new();
    MODEL.get_or_init(|| ImageModel::load(&vision_config()).expect("load vision model"))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn norm(a: &[f32]) -> f64 {
    a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

#[derive(serde::Deserialize)]
struct Reference {
    model: String,
    sentence_transformers_version: String,
    torch_version: String,
    sentences: Vec<String>,
    embeddings: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

// ---------------------------------------------------------------- text

#[test]
fn matches_sentence_transformers_reference() {
    let r = reference();
    assert_eq!(r.sentences.len(), r.embeddings.len());
    let model = text_model();
    let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
    let batch = model.embed(&texts).unwrap();
    let mut min = f64::MAX;
    for (i, (got, want)) in batch.iter().zip(&r.embeddings).enumerate() {
        assert_eq!(got.len(), MINILM_DIM);
        assert_eq!(want.len(), MINILM_DIM);
        let single = model.embed(&[texts[i]]).unwrap().remove(0);
        for (kind, v) in [("batch", got), ("single", &single)] {
            let c = cosine(v, want);
            println!("sentence {i} ({kind}): cosine {c:.9}");
            assert!(c >= 0.999, "sentence {i} ({kind}): cosine {c} < 0.999");
            min = min.min(c);
        }
    }
    println!(
        "minimum cosine vs {} (sentence-transformers {}, torch {}): {min:.9} (1 - cos = {:.2e})",
        r.model,
        r.sentence_transformers_version,
        r.torch_version,
        1.0 - min
    );
}

#[test]
fn embeddings_are_unit_norm_384_dims() {
    let v = text_model()
        .embed(&["error: linker `cc` not found", "", "   ", "🚀 ünïcödé ✓"])
        .unwrap();
    assert_eq!(v.len(), 4);
    for e in &v {
        assert_eq!(e.len(), MINILM_DIM);
        assert!((norm(e) - 1.0).abs() < 1e-5, "norm {}", norm(e));
        assert!(e.iter().all(|x| x.is_finite()));
    }
    assert_eq!(text_model().dim(), MINILM_DIM);
}

#[test]
fn empty_batch_gives_empty_result() {
    assert!(text_model().embed(&[]).unwrap().is_empty());
}

#[test]
fn batch_matches_single_and_keeps_order() {
    let texts = [
        "thread 'main' panicked at 'index out of bounds: the len is 3 but the index is 7'",
        "ok",
        "TypeError: Cannot read properties of undefined (reading 'map') at App.render (App.js:17:22)",
        "npm ERR! code ERESOLVE unable to resolve dependency tree",
        "segfault",
    ];
    let model = text_model();
    let batch = model.embed(&texts).unwrap();
    assert_eq!(batch.len(), texts.len());
    for (text, b) in texts.iter().zip(&batch) {
        let single = model.embed(&[text]).unwrap().remove(0);
        let c = cosine(b, &single);
        assert!(c > 0.99999, "batch vs single cosine {c} for {text:?}");
    }
    // Different texts are not the same vector.
    assert!(cosine(&batch[0], &batch[3]) < 0.95);
    // More than one internal chunk (32), with duplicates, still in order.
    let many: Vec<&str> = texts.iter().cycle().take(70).copied().collect();
    let out = model.embed(&many).unwrap();
    for (i, v) in out.iter().enumerate() {
        assert!(cosine(v, &batch[i % texts.len()]) > 0.99999, "item {i}");
    }
}

#[test]
fn long_text_is_truncated_to_max_tokens() {
    let model = text_model();
    let long: String = (0..400).map(|i| format!("word{i} ")).collect();
    assert!(long.split_whitespace().count() >= 400);
    assert_eq!(model.token_count(&long).unwrap(), 256);
    assert_eq!(model.max_tokens(), 256);
    // Anything past the limit does not change the embedding.
    let longer = format!("{long} completely different ending about databases and kernels");
    let v = model.embed(&[&long, &longer]).unwrap();
    assert!(cosine(&v[0], &v[1]) > 0.99999);
    // ... while a change inside the window does.
    let changed = format!("kernel panic {long}");
    let w = model.embed(&[&changed]).unwrap();
    assert!(cosine(&v[0], &w[0]) < 0.99999);
}

#[test]
fn concurrent_calls_agree() {
    let model = text_model();
    let expected = model
        .embed(&["connection refused (os error 111)"])
        .unwrap()
        .remove(0);
    let expected = Arc::new(expected);
    std::thread::scope(|s| {
        for _ in 0..4 {
            let expected = Arc::clone(&expected);
            s.spawn(move || {
                for _ in 0..5 {
                    let v = model
                        .embed(&["connection refused (os error 111)", "x"])
                        .unwrap();
                    assert!(cosine(&v[0], &expected) > 0.99999);
                }
            });
        }
    });
}

#[test]
fn missing_model_dir_is_a_clear_error() {
    let cfg = TextModelConfig {
        model_dir: PathBuf::from("/nonexistent/model/dir"),
        ..text_config()
    };
    let err = TextModel::load(&cfg).unwrap_err();
    assert!(matches!(err, ModelError::MissingFile { .. }), "{err:?}");
    assert!(err.to_string().contains("make model"), "{err}");
}

#[test]
fn invalid_config_is_rejected() {
    let cfg = TextModelConfig {
        sessions: 0,
        ..text_config()
    };
    assert!(matches!(TextModel::load(&cfg), Err(ModelError::Config(_))));
}

#[test]
fn wrong_model_is_rejected_at_load() {
    // The vision model is a valid ONNX file, but not a text model.
    let dir = std::env::temp_dir().join(format!("embedder-wrong-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(vision_model_path(), dir.join("model.onnx")).unwrap();
    std::fs::copy(
        model_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let cfg = TextModelConfig {
        model_dir: dir.clone(),
        ..text_config()
    };
    let err = TextModel::load(&cfg).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(err, ModelError::BadModel { .. }), "{err:?}");
}

// ---------------------------------------------------------------- images

fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, format).unwrap();
    buf.into_inner()
}

fn gradient(w: u32, h: u32, phase: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            ((x * 255) / w.max(1)) as u8,
            ((y * 255) / h.max(1)) as u8,
            (((x + y + phase) * 7) % 256) as u8,
        ])
    })
}

#[test]
fn png_and_jpeg_embed_to_unit_norm_512() {
    let model = image_model();
    assert_eq!(model.dim(), 512);
    let img = DynamicImage::ImageRgb8(gradient(320, 240, 0));
    let png = encode(img.clone(), ImageFormat::Png);
    let jpeg = encode(img, ImageFormat::Jpeg);
    assert_eq!(&png[1..4], b"PNG");
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
    let a = model.embed_image(&png).unwrap();
    let b = model.embed_image(&jpeg).unwrap();
    for v in [&a, &b] {
        assert_eq!(v.len(), 512);
        assert!((norm(v) - 1.0).abs() < 1e-5);
        assert!(v.iter().all(|x| x.is_finite()));
    }
    // Same picture, lossy vs lossless: close but not bit-identical.
    let c = cosine(&a, &b);
    assert!(c > 0.95, "png vs jpeg cosine {c}");
}

#[test]
fn image_embedding_is_deterministic_and_content_dependent() {
    let model = image_model();
    let png = encode(
        DynamicImage::ImageRgb8(gradient(224, 224, 0)),
        ImageFormat::Png,
    );
    let other = encode(
        DynamicImage::ImageRgb8(RgbImage::from_fn(224, 224, |x, y| {
            if (x / 16 + y / 16) % 2 == 0 {
                Rgb([250, 20, 20])
            } else {
                Rgb([10, 10, 200])
            }
        })),
        ImageFormat::Png,
    );
    let a1 = model.embed_image(&png).unwrap();
    let a2 = model.embed_image(&png).unwrap();
    assert_eq!(a1, a2);
    let b = model.embed_image(&other).unwrap();
    assert!(
        cosine(&a1, &b) < 0.99,
        "different images gave cosine {}",
        cosine(&a1, &b)
    );
}

#[test]
fn odd_shapes_alpha_and_grayscale_are_accepted() {
    let model = image_model();
    let cases = [
        DynamicImage::ImageRgb8(gradient(1, 1, 3)),
        DynamicImage::ImageRgb8(gradient(1000, 50, 1)),
        DynamicImage::ImageRgb8(gradient(30, 700, 2)),
        DynamicImage::ImageRgba8(RgbaImage::from_pixel(64, 48, Rgba([10, 200, 30, 128]))),
        DynamicImage::ImageLuma8(image::GrayImage::from_fn(100, 80, |x, _| {
            image::Luma([(x * 2) as u8])
        })),
    ];
    for img in cases {
        let v = model.embed_image(&encode(img, ImageFormat::Png)).unwrap();
        assert_eq!(v.len(), 512);
        assert!((norm(&v) - 1.0).abs() < 1e-5);
    }
}

#[test]
fn bad_image_bytes_are_an_error() {
    let model = image_model();
    let png = encode(
        DynamicImage::ImageRgb8(gradient(64, 64, 0)),
        ImageFormat::Png,
    );
    let gif_header = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec();
    for bad in [
        Vec::new(),
        b"definitely not an image".to_vec(),
        png[..png.len() / 2].to_vec(),      // truncated PNG
        vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 0], // truncated JPEG
        gif_header,                         // not PNG/JPEG
    ] {
        let err = model.embed_image(&bad).unwrap_err();
        assert!(matches!(err, ModelError::InvalidImage(_)), "{err:?}");
    }
}

#[test]
fn vision_config_mismatches_are_rejected_at_load() {
    let wrong_dim = ImageModelConfig {
        output_dim: 768,
        ..vision_config()
    };
    assert!(matches!(
        ImageModel::load(&wrong_dim),
        Err(ModelError::BadModel { .. })
    ));
    let wrong_input = ImageModelConfig {
        input_name: "images".into(),
        ..vision_config()
    };
    assert!(matches!(
        ImageModel::load(&wrong_input),
        Err(ModelError::BadModel { .. })
    ));
    let wrong_size = ImageModelConfig {
        image_size: 336,
        ..vision_config()
    };
    assert!(matches!(
        ImageModel::load(&wrong_size),
        Err(ModelError::BadModel { .. })
    ));
    let missing = ImageModelConfig {
        model_path: PathBuf::from("/nonexistent/vision.onnx"),
        ..vision_config()
    };
    let err = ImageModel::load(&missing).unwrap_err();
    assert!(err.to_string().contains("make model"), "{err}");
}
