//! Feature sequences as `.npy` files (`[T, C]` float arrays), for head-only training on
//! pre-extracted features.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use npyz::WriterBuilder;

use crate::error::{Error, Result};
use crate::io::write_atomic;

/// A `[T, C]` feature sequence in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSequence {
    /// Values, `t * channels + c`.
    pub data: Vec<f32>,
    /// Number of time steps.
    pub len: usize,
    /// Feature width.
    pub channels: usize,
}

impl FeatureSequence {
    /// Read a 2-D `float32` (or `float64`, converted) C-order `.npy` file.
    pub fn read(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::Npy {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let npy = npyz::NpyFile::new(&bytes[..])
            .map_err(|e| bad(format!("not a valid .npy file: {e}")))?;
        let shape = npy.shape().to_vec();
        if shape.len() != 2 {
            return Err(bad(format!(
                "expected a 2-D [T, C] array, found shape {shape:?}"
            )));
        }
        if npy.order() != npyz::Order::C {
            return Err(bad(
                "Fortran-ordered arrays are not supported; save with C order".into(),
            ));
        }
        let dtype = match npy.dtype() {
            npyz::DType::Plain(ts) => ts.to_string(),
            other => other.descr(),
        };
        // npyz converts either byte order.
        let data: Vec<f32> = match &dtype[1..] {
            "f4" => npy.into_vec::<f32>(),
            "f2" => npy
                .into_vec::<half::f16>()
                .map(|v| v.into_iter().map(half::f16::to_f32).collect()),
            "f8" => npy
                .into_vec::<f64>()
                .map(|v| v.into_iter().map(|x| x as f32).collect()),
            _ => {
                return Err(bad(format!(
                    "expected float32, float16 or float64 data, found dtype {dtype}"
                )));
            }
        }
        .map_err(|e| bad(format!("truncated or corrupt data: {e}")))?;
        Ok(Self {
            data,
            len: shape[0] as usize,
            channels: shape[1] as usize,
        })
    }

    /// The `[T, C]` shape of a 2-D float `.npy` file, from its header (the data is not read).
    pub fn shape(path: &Path) -> Result<(usize, usize)> {
        let bad = |reason: String| Error::Npy {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let npy = npyz::NpyFile::new(std::io::BufReader::new(file))
            .map_err(|e| bad(format!("not a valid .npy file: {e}")))?;
        let shape = npy.shape().to_vec();
        let dtype = match npy.dtype() {
            npyz::DType::Plain(ts) => ts.to_string(),
            other => other.descr(),
        };
        if shape.len() != 2 {
            return Err(bad(format!(
                "expected a 2-D [T, C] array, found shape {shape:?}"
            )));
        }
        if !matches!(&dtype.get(1..), Some("f2" | "f4" | "f8")) {
            return Err(bad(format!(
                "expected float32, float16 or float64 data, found dtype {dtype}"
            )));
        }
        Ok((shape[0] as usize, shape[1] as usize))
    }

    /// Write as a `float32` `.npy` file, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut buf = Vec::with_capacity(self.data.len() * 4 + 128);
        let res = (|| {
            let mut w = npyz::WriteOptions::new()
                .default_dtype()
                .shape(&[self.len as u64, self.channels as u64])
                .writer(&mut buf)
                .begin_nd()?;
            w.extend(self.data.iter().copied())?;
            w.finish()
        })();
        res.map_err(|e| Error::io(path, e))?;
        write_atomic(path, &buf)
    }

    /// As a `[T, C]` tensor.
    pub fn to_tensor(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.data.clone(), [self.len, self.channels]),
            device,
        )
    }

    /// From a `[T, C]` tensor.
    pub fn from_tensor(t: Tensor<2>) -> Self {
        let [len, channels] = t.dims();
        let data = t
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .expect("converted to f32");
        Self {
            data,
            len,
            channels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_file_and_tensor() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.npy");
        let f = FeatureSequence {
            data: (0..6).map(|i| i as f32 * 0.5).collect(),
            len: 3,
            channels: 2,
        };
        f.write(&p).unwrap();
        assert_eq!(FeatureSequence::read(&p).unwrap(), f);
        let t = f.to_tensor(&crate::backend::cpu_device());
        assert_eq!(t.dims(), [3, 2]);
        assert_eq!(FeatureSequence::from_tensor(t), f);
    }

    #[test]
    fn bad_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.npy");
        std::fs::write(&p, b"hello").unwrap();
        assert!(matches!(FeatureSequence::read(&p), Err(Error::Npy { path, .. }) if path == p));
        // 1-D array.
        let mut buf = Vec::new();
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[3])
            .writer(&mut buf)
            .begin_nd()
            .unwrap();
        w.extend([1f32, 2., 3.]).unwrap();
        w.finish().unwrap();
        std::fs::write(&p, &buf).unwrap();
        let e = FeatureSequence::read(&p).unwrap_err().to_string();
        assert!(e.contains("2-D") && e.contains("bad.npy"), "{e}");
        // Integer dtype.
        let mut buf = Vec::new();
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[1, 2])
            .writer(&mut buf)
            .begin_nd()
            .unwrap();
        w.extend([1i32, 2]).unwrap();
        w.finish().unwrap();
        std::fs::write(&p, &buf).unwrap();
        assert!(
            FeatureSequence::read(&p)
                .unwrap_err()
                .to_string()
                .contains("<i4")
        );
        // Truncated data.
        let mut buf = Vec::new();
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[4, 2])
            .writer(&mut buf)
            .begin_nd()
            .unwrap();
        w.extend([0f32; 8]).unwrap();
        w.finish().unwrap();
        std::fs::write(&p, &buf[..buf.len() - 8]).unwrap();
        assert!(matches!(FeatureSequence::read(&p), Err(Error::Npy { .. })));
        assert!(matches!(
            FeatureSequence::read(&d.path().join("missing.npy")),
            Err(Error::Io { .. })
        ));
    }
}
