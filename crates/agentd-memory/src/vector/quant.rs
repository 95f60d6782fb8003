//! Int8 scalar-quantised vectors for similarity work on hot paths.
//!
//! The router compares every candidate with the query, the role profile and the items it has
//! selected. With f32 embeddings that reads 1 KiB per candidate (256 dimensions), which on a
//! large candidate set is memory-bound; an int8 copy is a quarter of that and its dot product is
//! integer multiply-add. Each vector keeps one scale (its largest magnitude / 127), so a cosine
//! of unit vectors is off by well under 0.01.

use super::hnsw::{dot_i8, dot_i8_pair, prefetch_lines};

/// `values[i] as f32 * scale` approximates the original vector's `i`-th component.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantizedVector {
    /// Multiplier back to the original scale.
    pub scale: f32,
    /// Quantised components.
    pub values: Vec<i8>,
}

impl QuantizedVector {
    /// Quantises `v` (rounding to nearest).
    pub fn quantize(v: &[f32]) -> Self {
        let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        if max == 0.0 || !max.is_finite() {
            return QuantizedVector {
                scale: 0.0,
                values: vec![0; v.len()],
            };
        }
        let inv = 127.0 / max;
        QuantizedVector {
            scale: max / 127.0,
            values: v
                .iter()
                .map(|x| (x * inv).round().clamp(-127.0, 127.0) as i8)
                .collect(),
        }
    }

    /// Dimension.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the vector has no components.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Asks the CPU to start loading the vector into cache (a hint; it never faults). Loops over
    /// many separately allocated vectors call this a few iterations ahead.
    #[inline]
    pub fn prefetch(&self) {
        prefetch_lines(&self.values);
    }

    /// Approximate dot product with another quantised vector of the same dimension.
    #[inline]
    pub fn dot(&self, other: &QuantizedVector) -> f32 {
        dot_i8(&self.values, &other.values) as f32 * self.scale * other.scale
    }

    /// Approximate dot products with `a` and with `b`, reading `self` once (the router scores
    /// every candidate against the query and the role profile).
    #[inline]
    pub fn dot_pair(&self, a: &QuantizedVector, b: &QuantizedVector) -> (f32, f32) {
        let (x, y) = dot_i8_pair(&self.values, &a.values, &b.values);
        (
            x as f32 * self.scale * a.scale,
            y as f32 * self.scale * b.scale,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantised_dot_is_close_to_f32() {
        let norm = |v: Vec<f32>| {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
        };
        let a = norm(
            (0..256)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect(),
        );
        let b = norm(
            (0..256)
                .map(|i| ((i * 11 % 89) as f32 - 44.0) / 44.0)
                .collect(),
        );
        let exact: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let approx = QuantizedVector::quantize(&a).dot(&QuantizedVector::quantize(&b));
        assert!((exact - approx).abs() < 0.01, "{exact} vs {approx}");
        let self_sim = QuantizedVector::quantize(&a).dot(&QuantizedVector::quantize(&a));
        assert!((self_sim - 1.0).abs() < 0.01);
        let (qa, qb) = (QuantizedVector::quantize(&a), QuantizedVector::quantize(&b));
        assert_eq!(qa.dot_pair(&qb, &qa), (qa.dot(&qb), qa.dot(&qa)));
        let zero = QuantizedVector::quantize(&[0.0; 4]);
        assert_eq!(
            zero.dot(&QuantizedVector::quantize(&[1.0, 0.0, 0.0, 0.0])),
            0.0
        );
    }
}
