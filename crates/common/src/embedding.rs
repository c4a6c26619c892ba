//! Embedding vectors. An [`Embedding`] is guaranteed non-empty, finite, of non-zero norm and
//! L2-normalised, so every store and every similarity computation can rely on it.

use serde::{Deserialize, Serialize};

/// Dimension of the text model (all-MiniLM-L6-v2).
pub const TEXT_DIM: usize = 384;
/// Dimension of the image model (CLIP ViT-B/32 image tower or compatible).
pub const IMAGE_DIM: usize = 512;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EmbeddingError {
    #[error("embedding has {actual} dimensions, expected {expected}")]
    WrongDimension { expected: usize, actual: usize },
    #[error("embedding contains a non-finite value at index {index}")]
    NonFinite { index: usize },
    #[error("embedding has zero norm")]
    ZeroNorm,
    #[error("embedding bytes are not a whole number of f32 values")]
    BadBytes,
}

/// A validated, L2-normalised embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Vec<f32>", into = "Vec<f32>")]
pub struct Embedding(Vec<f32>);

impl Embedding {
    /// Validates `values` (finite, non-zero) and normalises them to unit length.
    pub fn new(mut values: Vec<f32>) -> Result<Self, EmbeddingError> {
        if values.is_empty() {
            return Err(EmbeddingError::WrongDimension {
                expected: 1,
                actual: 0,
            });
        }
        if let Some(index) = values.iter().position(|v| !v.is_finite()) {
            return Err(EmbeddingError::NonFinite { index });
        }
        let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
        if !norm.is_normal() {
            return Err(EmbeddingError::ZeroNorm);
        }
        // Already unit length (e.g. read back from storage): keep the values bit-exact.
        if (norm - 1.0).abs() > 1e-6 {
            for v in &mut values {
                *v /= norm;
            }
        }
        Ok(Self(values))
    }

    /// Like [`Embedding::new`], and also checks the dimension.
    pub fn with_dim(values: Vec<f32>, expected: usize) -> Result<Self, EmbeddingError> {
        if values.len() != expected {
            return Err(EmbeddingError::WrongDimension {
                expected,
                actual: values.len(),
            });
        }
        Self::new(values)
    }

    pub fn dim(&self) -> usize {
        self.0.len()
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.0
    }

    /// Cosine similarity; both sides are unit vectors, so this is the dot product.
    /// Vectors of different dimension have similarity 0.
    pub fn cosine(&self, other: &Embedding) -> f32 {
        if self.dim() != other.dim() {
            return 0.0;
        }
        dot(&self.0, &other.0)
    }

    /// Little-endian f32 bytes (how the system of record keeps vectors for re-indexing).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        self.0.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    pub fn from_le_bytes(bytes: &[u8]) -> Result<Self, EmbeddingError> {
        if !bytes.len().is_multiple_of(4) {
            return Err(EmbeddingError::BadBytes);
        }
        let values = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Self::new(values)
    }
}

/// Dot product of two equally long slices.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

impl TryFrom<Vec<f32>> for Embedding {
    type Error = EmbeddingError;
    fn try_from(v: Vec<f32>) -> Result<Self, Self::Error> {
        Self::new(v)
    }
}

impl From<Embedding> for Vec<f32> {
    fn from(e: Embedding) -> Self {
        e.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_rejects_bad_vectors() {
        let e = Embedding::new(vec![3.0, 4.0]).expect("valid");
        assert!((e.as_slice()[0] - 0.6).abs() < 1e-6);
        assert!((e.cosine(&e) - 1.0).abs() < 1e-6);
        assert_eq!(
            Embedding::new(vec![0.0, 0.0]),
            Err(EmbeddingError::ZeroNorm)
        );
        assert_eq!(
            Embedding::new(vec![1.0, f32::NAN]),
            Err(EmbeddingError::NonFinite { index: 1 })
        );
        assert!(Embedding::with_dim(vec![1.0; 3], TEXT_DIM).is_err());
        assert!(Embedding::new(vec![]).is_err());
    }

    #[test]
    fn bytes_round_trip() {
        let e = Embedding::new((1..=384).map(|i| i as f32).collect()).expect("valid");
        let back = Embedding::from_le_bytes(&e.to_le_bytes()).expect("valid");
        assert_eq!(back, e, "a stored vector reads back bit-exactly");
        assert_eq!(
            Embedding::from_le_bytes(&[0, 1, 2]),
            Err(EmbeddingError::BadBytes)
        );
    }
}
