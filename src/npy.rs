//! Reading user-provided inputs for verification from NumPy `.npy` and `.npz` files.
//!
//! Only what `numpy.save`/`savez` write for plain arrays: little-endian or byte-sized numeric
//! dtypes in C order. Anything else is refused with the reason, never guessed.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use tract_onnx::prelude::*;

use crate::error::{Error, Result};

/// A `--inputs` argument: an `.npz` with one array per input name, or `NAME=FILE.npy`.
#[derive(Debug, Clone)]
pub enum InputFile {
    Npz(PathBuf),
    Npy(String, PathBuf),
}

impl std::str::FromStr for InputFile {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once('=') {
            Some((name, file)) => Ok(InputFile::Npy(name.to_string(), file.into())),
            None if s.ends_with(".npz") => Ok(InputFile::Npz(s.into())),
            None => Err("expected FILE.npz or NAME=FILE.npy".into()),
        }
    }
}

fn bad(path: &Path, why: impl Into<String>) -> Error {
    Error::Usage(format!("cannot use {} as an input: {}", path.display(), why.into()))
}

/// Parses one `.npy` image.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Tensor> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad(path, "not a .npy array"));
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        _ => return Err(bad(path, "truncated header")),
    };
    let header = bytes.get(start..start + len).ok_or_else(|| bad(path, "truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad(path, "header is not text"))?;
    let field = |key: &str| header.split(&format!("'{key}':")).nth(1).map(str::trim);
    let descr = field("descr").and_then(|d| d.split('\'').nth(1)).ok_or_else(|| bad(path, "no dtype"))?;
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err(bad(path, "Fortran-ordered arrays are not supported; save with np.ascontiguousarray"));
    }
    let shape_text = field("shape")
        .and_then(|s| s.strip_prefix('('))
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad(path, "no shape"))?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad(path, format!("bad shape ({shape_text})"))))
        .collect::<Result<_>>()?;
    let data = &bytes[start + len..];
    let n =
        shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| bad(path, "its shape is too large"))?;
    fn read<T: Datum + Copy, const N: usize>(
        data: &[u8],
        n: usize,
        shape: &[usize],
        f: fn([u8; N]) -> T,
    ) -> Option<Tensor> {
        let v: Vec<T> = data.chunks_exact(N).take(n).map(|c| f(c.try_into().expect("chunk"))).collect();
        (v.len() == n).then(|| Tensor::from_shape(shape, &v).ok()).flatten()
    }
    let t = match descr {
        "<f4" => read(data, n, &shape, f32::from_le_bytes),
        "<f8" => read(data, n, &shape, f64::from_le_bytes),
        "<f2" => read(data, n, &shape, |b: [u8; 2]| half::f16::from_le_bytes(b)),
        "<i8" => read(data, n, &shape, i64::from_le_bytes),
        "<i4" => read(data, n, &shape, i32::from_le_bytes),
        "|b1" => read(data, n, &shape, |b: [u8; 1]| b[0] != 0),
        "|u1" => read(data, n, &shape, |b: [u8; 1]| b[0]),
        other => {
            return Err(bad(
                path,
                format!("dtype '{other}' is not supported (use float32/64/16, int64/32, bool, uint8)"),
            ))
        }
    };
    t.ok_or_else(|| bad(path, format!("holds fewer than the {n} elements its shape {shape:?} needs")))
}

/// Reads every `--inputs` argument into tensors by input name.
pub fn read_inputs(files: &[InputFile]) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for f in files {
        match f {
            InputFile::Npy(name, path) => {
                let bytes = std::fs::read(path).map_err(|source| Error::Read { path: path.clone(), source })?;
                out.insert(name.clone(), parse(&bytes, path)?);
            }
            InputFile::Npz(path) => {
                let file = std::fs::File::open(path).map_err(|source| Error::Read { path: path.clone(), source })?;
                let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(path, e.to_string()))?;
                for i in 0..zip.len() {
                    let mut entry = zip.by_index(i).map_err(|e| bad(path, e.to_string()))?;
                    let name = entry.name().trim_end_matches(".npy").to_string();
                    let mut bytes = vec![];
                    entry.read_to_end(&mut bytes).map_err(|source| Error::Read { path: path.clone(), source })?;
                    out.insert(name, parse(&bytes, path)?);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn reads_what_numpy_writes() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = parse(&npy("<f4", "(2, 2)", &data), Path::new("a.npy")).unwrap();
        assert_eq!(t.shape(), &[2, 2]);
        assert_eq!(t.cast_to::<f32>().unwrap().to_plain_array_view::<f32>().unwrap().iter().sum::<f32>(), 10.0);
        let t = parse(&npy("<i8", "(3,)", &[1, 0, 0, 0, 0, 0, 0, 0].repeat(3)), Path::new("b.npy")).unwrap();
        assert_eq!(t.shape(), &[3]);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(parse(b"nope", Path::new("x.npy")).unwrap_err().to_string().contains("x.npy"));
        let e = parse(&npy(">f4", "(1,)", &[0; 4]), Path::new("y.npy")).unwrap_err().to_string();
        assert!(e.contains("'>f4' is not supported"), "{e}");
        let e = parse(&npy("<f4", "(4,)", &[0; 4]), Path::new("z.npy")).unwrap_err().to_string();
        assert!(e.contains("fewer than the 4"), "{e}");
    }
}
