//! NumPy's array files for `crat infer`: `.npy` (one array) and `.npz` (a zip of named
//! `.npy` arrays, as `numpy.savez` and `numpy.savez_compressed` write them).
//!
//! Read: format versions 1 to 3, little-endian (or byte-order-free) arrays of the dtypes the
//! wire carries (`<f4 <f2 <f8 <i8 <i4 |i1 |u1 |b1`) in C order. A big-endian or
//! Fortran-ordered array is refused with what to do instead (`astype('<f4')`,
//! `np.ascontiguousarray`). Written: version 1 (2 when the header needs it), C order, the
//! header padded so that the data starts on a 64-byte boundary, as NumPy writes it.

use std::io::{Read, Write};

use anyhow::{Context, bail, ensure};
use crat_core::tensor::{DType, NamedTensor, Tensor};

const MAGIC: &[u8] = b"\x93NUMPY";
/// Longest header read (NumPy itself refuses headers over 10,000 bytes by default).
const HEADER_BYTES_MAX: usize = 65_536;
/// Most arrays read from one `.npz`.
const NPZ_ARRAYS_MAX: usize = 1_024;

fn descr(dtype: DType) -> anyhow::Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "<f4",
        DType::F16 => "<f2",
        DType::F64 => "<f8",
        DType::I64 => "<i8",
        DType::I32 => "<i4",
        DType::I8 => "|i1",
        DType::U8 => "|u1",
        DType::Bool => "|b1",
        other => bail!("no NumPy dtype written for {other:?}"),
    })
}

fn dtype_of(descr: &str) -> anyhow::Result<DType> {
    Ok(match descr {
        "<f4" => DType::F32,
        "<f2" => DType::F16,
        "<f8" => DType::F64,
        "<i8" => DType::I64,
        "<i4" => DType::I32,
        "|i1" | "<i1" => DType::I8,
        "|u1" | "<u1" => DType::U8,
        "|b1" | "<b1" => DType::Bool,
        d if d.starts_with('>') => bail!(
            "big-endian array ({d}): save it little-endian, e.g. a.astype('<{}')",
            &d[1..]
        ),
        d => bail!("dtype {d} is not one the network carries (f32 f16 f64 i64 i32 i8 u8 bool)"),
    })
}

/// The value of `key` in NumPy's header (a Python dict literal), as its source text.
fn header_field<'a>(header: &'a str, key: &str) -> anyhow::Result<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .with_context(|| format!("the header has no '{key}'"))?;
    let rest = header[at + key.len() + 2..].trim_start();
    let rest = rest
        .strip_prefix(':')
        .with_context(|| format!("'{key}' has no value"))?
        .trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')').map(|i| i + 1)
    } else {
        rest.find([',', '}'])
    }
    .with_context(|| format!("'{key}' has no end"))?;
    Ok(rest[..end].trim())
}

/// Reads one `.npy` file's bytes.
pub(crate) fn read_npy(bytes: &[u8]) -> anyhow::Result<Tensor> {
    ensure!(
        bytes.starts_with(MAGIC),
        "not a .npy file (no \\x93NUMPY magic)"
    );
    let version = *bytes.get(MAGIC.len()).context("truncated .npy header")?;
    let (len, start) = match version {
        1 => {
            let b = bytes.get(8..10).context("truncated .npy header")?;
            (usize::from(u16::from_le_bytes([b[0], b[1]])), 10)
        }
        2 | 3 => {
            let b = bytes.get(8..12).context("truncated .npy header")?;
            let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            (usize::try_from(len).unwrap_or(usize::MAX), 12)
        }
        v => bail!(".npy format version {v} is not supported (1 to 3 are)"),
    };
    ensure!(
        len <= HEADER_BYTES_MAX,
        ".npy header of {len} bytes is too long"
    );
    let header = bytes
        .get(start..start + len)
        .context("truncated .npy header")?;
    let header = std::str::from_utf8(header).context(".npy header is not text")?;
    let descr = header_field(header, "descr")?.trim_matches(['\'', '"']);
    let dtype = dtype_of(descr)?;
    match header_field(header, "fortran_order")? {
        "False" => {}
        "True" => bail!("Fortran-ordered array: save np.ascontiguousarray(a) instead"),
        other => bail!("fortran_order {other:?}"),
    }
    let shape = header_field(header, "shape")?;
    let shape: Vec<u64> = shape
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse::<u64>().with_context(|| format!("dimension {d:?}")))
        .collect::<anyhow::Result<_>>()?;
    let data = bytes[start + len..].to_vec();
    Tensor::new(dtype, shape, data).context(".npy data does not match its header")
}

/// Writes one tensor as `.npy` bytes.
pub(crate) fn write_npy(tensor: &Tensor) -> anyhow::Result<Vec<u8>> {
    let shape = match tensor.shape() {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        descr(tensor.dtype())?
    );
    // Version 1 has a 2-byte length; NumPy moves to version 2 beyond it.
    let prefix = if header.len() + 1 + 10 <= usize::from(u16::MAX) {
        10
    } else {
        12
    };
    let padded = (prefix + header.len() + 1).div_ceil(64) * 64;
    header.push_str(&" ".repeat(padded - prefix - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(padded + tensor.bytes().len());
    out.extend_from_slice(MAGIC);
    if prefix == 10 {
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(
            &u16::try_from(header.len())
                .unwrap_or(u16::MAX)
                .to_le_bytes(),
        );
    } else {
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(
            &u32::try_from(header.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(tensor.bytes());
    Ok(out)
}

/// Reads every array of a `.npz` file's bytes, named by their entry (`.npy` dropped), in
/// the archive's order.
pub(crate) fn read_npz(bytes: &[u8]) -> anyhow::Result<Vec<NamedTensor>> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).context("not a .npz file")?;
    ensure!(
        zip.len() <= NPZ_ARRAYS_MAX,
        ".npz of {} arrays (at most {NPZ_ARRAYS_MAX})",
        zip.len()
    );
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i)?;
        let name = entry
            .name()
            .strip_suffix(".npy")
            .with_context(|| format!(".npz entry {:?} is not a .npy array", entry.name()))?
            .to_owned();
        let mut data = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0).min(1 << 30));
        entry
            .read_to_end(&mut data)
            .with_context(|| format!("reading {name} from the .npz"))?;
        let tensor = read_npy(&data).with_context(|| format!("array {name}"))?;
        out.push(NamedTensor::new(name, tensor));
    }
    Ok(out)
}

/// Writes named tensors as `.npz` bytes (stored, as `numpy.savez` does).
pub(crate) fn write_npz(tensors: &[NamedTensor]) -> anyhow::Result<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    for t in tensors {
        zip.start_file(format!("{}.npy", t.name), options)?;
        zip.write_all(&write_npy(&t.tensor)?)?;
    }
    Ok(zip.finish()?.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn data(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/npy")
            .join(name);
        std::fs::read(&path).unwrap()
    }

    /// Files written by NumPy 2.4 (`tests/data/npy`): every dtype reads with its values, and
    /// writing it back gives NumPy's bytes exactly.
    #[test]
    fn reads_and_writes_what_numpy_writes() {
        let f32s = read_npy(&data("f32.npy")).unwrap();
        assert_eq!(f32s.shape(), [2, 3]);
        assert_eq!(
            f32s.to_vec::<f32>().unwrap(),
            [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
        );
        let i64s = read_npy(&data("i64.npy")).unwrap();
        assert_eq!(i64s.to_vec::<i64>().unwrap(), [-(1 << 40), 7, 0]);
        let bools = read_npy(&data("bool.npy")).unwrap();
        assert_eq!(
            (bools.dtype(), bools.bytes()),
            (DType::Bool, &[1, 0, 1][..])
        );
        let scalar = read_npy(&data("scalar.npy")).unwrap();
        assert_eq!(scalar.shape(), [] as [u64; 0]);
        for (file, dtype) in [
            ("f32.npy", DType::F32),
            ("f16.npy", DType::F16),
            ("f64.npy", DType::F64),
            ("i64.npy", DType::I64),
            ("i32.npy", DType::I32),
            ("i8.npy", DType::I8),
            ("u8.npy", DType::U8),
            ("bool.npy", DType::Bool),
            ("scalar.npy", DType::F32),
        ] {
            let bytes = data(file);
            let t = read_npy(&bytes).unwrap();
            assert_eq!(t.dtype(), dtype, "{file}");
            assert_eq!(
                write_npy(&t).unwrap(),
                bytes,
                "{file} written as NumPy does"
            );
        }
    }

    #[test]
    fn refuses_what_it_cannot_carry_with_the_fix() {
        let e = read_npy(&data("big_endian.npy")).unwrap_err().to_string();
        assert!(e.contains("astype('<f4')"), "{e}");
        let e = read_npy(&data("fortran.npy")).unwrap_err().to_string();
        assert!(e.contains("ascontiguousarray"), "{e}");
        assert!(read_npy(b"not numpy").is_err());
        let mut truncated = data("f32.npy");
        truncated.pop();
        assert!(read_npy(&truncated).is_err());
    }

    #[test]
    fn npz_stored_and_compressed_read_and_round_trip() {
        for file in ["pair.npz", "pair_compressed.npz"] {
            let arrays = read_npz(&data(file)).unwrap();
            let names: Vec<&str> = arrays.iter().map(|a| a.name.as_str()).collect();
            assert_eq!(names, ["a", "b"], "{file}");
            assert_eq!(arrays[0].tensor, read_npy(&data("f32.npy")).unwrap());
            assert_eq!(arrays[1].tensor, read_npy(&data("i64.npy")).unwrap());
            let again = read_npz(&write_npz(&arrays).unwrap()).unwrap();
            assert_eq!(again, arrays);
        }
    }
}
