//! PyTorch `.pth` / `.pt` reading, in both layouts `torch.save` has used.
//!
//! * zip (torch >= 1.6): an archive whose `<folder>/data.pkl` pickles the object and whose
//!   `<folder>/data/<key>` entries hold each storage's raw bytes; `<folder>/byteorder` says
//!   "little" or "big" (absent in early versions, which were little-endian).
//! * legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`): five pickles back to
//!   back (magic number, protocol version, system info, the object, the list of storage keys),
//!   then for each key an 8-byte element count and the storage's raw bytes.
//!
//! Pickles go through the tensor-only unpickler in [`super::pickle`]; this module decides
//! which of the unpickled objects are the model's tensors and materialises them.

use super::pickle::{self, Id, Obj, StorageDtype, TensorSpec, Unpickled};
use super::{NamedTensors, TensorInfo, WeightFormat};
use crate::error::{Error, Result};
use crate::fsutil;
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

const FORMAT: &str = "PyTorch .pth";

/// `0x1950a86a20f9469cfc6c`, the first pickle of a legacy file, as Python's LONG1 writes it.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL: i64 = 1001;

/// Keys under which training scripts commonly nest the state_dict, in priority order.
const WRAPPER_KEYS: [&str; 4] = ["state_dict", "model_state_dict", "model", "net"];

/// Tensors can add up to more than the storages they view (tied weights, overlapping views,
/// expanded tensors), but not by more than this factor plus [`OUTPUT_SLACK`] bytes, so that
/// a small file naming one storage a million times cannot demand terabytes.
const OUTPUT_FACTOR: usize = 8;
const OUTPUT_SLACK: usize = 1 << 26;

/// A tensor whose strides make it larger than its storage (an `expand`ed tensor) is
/// materialised only up to this many elements, so a tiny file cannot demand terabytes.
const MAX_EXPANDED_ELEMENTS: usize = 1 << 28;

/// Read every tensor of a PyTorch `.pth`/`.pt` file onto the CPU, in either layout
/// `torch.save` has used: zip (torch >= 1.6) or legacy (torch < 1.6, or
/// `_use_new_zipfile_serialization=False`).
///
/// Which tensors: the top-level dict itself if any of its values is a tensor (a plain
/// `state_dict`); otherwise the first of its `state_dict`, `model_state_dict`, `model`, `net`
/// entries that is a dict (the usual training checkpoint); otherwise the top-level dict.
/// Nested dicts of tensors are flattened with dotted names (`{"encoder": {"w": t}}` gives
/// `encoder.w`); entries that are neither tensors nor dicts (epochs, strings, lists, optimiser
/// parameter groups) are skipped. Names are returned as stored; use [`strip_prefix`] to drop
/// the `module.` prefix `DataParallel` adds.
///
/// dtypes: float32, float64, float16, bfloat16, int64 and uint8 load as the same candle dtype;
/// int32, int16 and int8 are widened losslessly to I64 (candle's best-supported integer type);
/// bool loads as U8 0/1 (the mask type of candle's `where_cond`). Views that share a storage,
/// transposes and other strided tensors are copied out into contiguous tensors of their own.
///
/// Fails with [`Error::UnsafePickle`] if the pickle references anything beyond tensors and
/// plain containers (a pickled `nn.Module`, `os.system`, ...): loading such a file in Python
/// would run code or construct arbitrary objects, so it is refused whole, before any tensor is
/// built. Fails with [`Error::Format`] if the file is truncated or malformed.
pub fn read_pth(path: &Path) -> Result<NamedTensors> {
    match super::detect_format(path)? {
        WeightFormat::PthZip => {
            let mut zip = ZipPth::open(path)?;
            let specs = select_tensors(&zip.pickle, path)?;
            // One storage in memory at a time, shared by all the views that use it.
            let mut by_storage: BTreeMap<&str, Vec<&(String, TensorSpec)>> = BTreeMap::new();
            for s in &specs {
                by_storage.entry(s.1.storage.key.as_str()).or_default().push(s);
            }
            let mut out = NamedTensors::new();
            let mut budget = OUTPUT_SLACK;
            for (key, users) in by_storage {
                let bytes = zip.storage(key)?;
                budget = budget.saturating_add(OUTPUT_FACTOR.saturating_mul(bytes.len()));
                for (name, spec) in users {
                    let t = build_one(path, name, spec, Some(&bytes), zip.big_endian, &mut budget)?;
                    out.insert(name.clone(), t);
                }
            }
            Ok(out)
        }
        WeightFormat::PthLegacy => {
            let bytes = fsutil::read(path)?;
            let legacy = parse_legacy(&bytes, path)?;
            let specs = select_tensors(&legacy.pickle, path)?;
            let mut out = NamedTensors::new();
            let stored: usize = legacy.ranges.values().map(|r| r.len()).sum();
            let mut budget = OUTPUT_SLACK.saturating_add(OUTPUT_FACTOR.saturating_mul(stored));
            for (name, spec) in &specs {
                let storage = legacy.ranges.get(&spec.storage.key).map(|r| &bytes[r.clone()]);
                out.insert(
                    name.clone(),
                    build_one(path, name, spec, storage, legacy.big_endian, &mut budget)?,
                );
            }
            Ok(out)
        }
        WeightFormat::Safetensors => Err(Error::format(
            path,
            FORMAT,
            "this is not a PyTorch file (neither a zip archive nor a pickle); try read_weights",
        )),
    }
}

/// Names, dtypes (as loaded) and shapes of a `.pth` file's tensors, in file order, from its
/// pickle alone: storages are not read.
pub(crate) fn describe_pth(path: &Path, format: WeightFormat) -> Result<Vec<TensorInfo>> {
    let pickle = match format {
        WeightFormat::PthZip => ZipPth::open(path)?.pickle,
        _ => parse_legacy(&fsutil::read(path)?, path)?.pickle,
    };
    Ok(select_tensors(&pickle, path)?
        .into_iter()
        .map(|(name, spec)| TensorInfo {
            name,
            dtype: spec.storage.dtype.candle_dtype(),
            shape: spec.shape,
        })
        .collect())
}

/// Remove `prefix` from the start of every tensor name that has it (e.g. the `module.` that
/// `torch.nn.DataParallel` adds); other names are kept as they are.
///
/// Fails with [`Error::InvalidArgument`] if two tensors would end up with the same name.
///
/// ```
/// use transferlab::weights::{strip_prefix, NamedTensors};
/// use candle_core::{Device, Tensor};
/// let mut t = NamedTensors::new();
/// t.insert("module.fc.weight".into(), Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu).unwrap());
/// let t = strip_prefix(t, "module.").unwrap();
/// assert!(t.contains_key("fc.weight"));
/// ```
pub fn strip_prefix(tensors: NamedTensors, prefix: &str) -> Result<NamedTensors> {
    strip_prefix_impl(tensors, prefix)
}

/// Names as the bare network has them: `module.` (DataParallel / DistributedDataParallel)
/// removed, and with `sequential`, the leading index of an `nn.Sequential` wrapper too
/// (`Sequential(Normalize(...), net)` saves `1.conv1.weight`). Of a Sequential, the element
/// with the most tensors is the network; the others (a normalisation layer's buffers) are
/// dropped: a transferlab model carries its normalisation in its spec.
///
/// ```
/// use transferlab::weights::{unwrap_wrappers, NamedTensors};
/// use candle_core::{Device, Tensor};
/// let z = || Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap();
/// let mut t = NamedTensors::new();
/// for k in ["module.0.mean", "module.1.conv1.weight", "module.1.fc.weight"] { t.insert(k.into(), z()); }
/// let names: Vec<String> = unwrap_wrappers(t, true).unwrap().into_keys().collect();
/// assert_eq!(names, ["conv1.weight", "fc.weight"]);
/// ```
pub fn unwrap_wrappers(tensors: NamedTensors, sequential: bool) -> Result<NamedTensors> {
    let tensors = strip_prefix_impl(tensors, "module.")?;
    if !sequential {
        return Ok(tensors);
    }
    let index_of = |k: &str| k.split_once('.').map(|(h, _)| h.to_string()).filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_digit()));
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for k in tensors.keys() {
        if let Some(i) = index_of(k) {
            *counts.entry(i).or_default() += 1;
        }
    }
    let Some(main) = counts.into_iter().max_by_key(|(_, n)| *n).map(|(i, _)| i) else {
        return Ok(tensors);
    };
    Ok(tensors
        .into_iter()
        .filter_map(|(k, v)| match index_of(&k) {
            Some(i) if i == main => Some((k[i.len() + 1..].to_string(), v)),
            Some(_) => None,
            None => Some((k, v)),
        })
        .collect())
}

fn strip_prefix_impl(tensors: NamedTensors, prefix: &str) -> Result<NamedTensors> {
    let mut out = NamedTensors::new();
    for (name, t) in tensors {
        let new = match name.strip_prefix(prefix) {
            Some(rest) => rest.to_string(),
            None => name,
        };
        if out.contains_key(&new) {
            return Err(Error::invalid(
                "prefix to strip",
                format!("removing '{prefix}' would give two tensors the name '{new}'"),
            ));
        }
        out.insert(new, t);
    }
    Ok(out)
}

struct ZipPth {
    path: std::path::PathBuf,
    archive: zip::ZipArchive<File>,
    /// Everything before `data.pkl` in its entry name, e.g. `archive/`.
    prefix: String,
    pickle: Unpickled,
    big_endian: bool,
}

impl ZipPth {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let mut archive = zip::ZipArchive::new(file)
            .map_err(|e| Error::format(path, FORMAT, format!("not a readable zip archive: {e}")))?;
        // The folder is the file's stem at save time (or "archive"), so it varies; torch reads
        // the record at the top folder, so a data.pkl nested deeper is not the object.
        let pkl = archive
            .file_names()
            .filter_map(|n| n.ok())
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| (n.matches('/').count(), n.len()))
            .map(|n| n.into_owned())
            .ok_or_else(|| Error::format(path, FORMAT, "the zip archive has no data.pkl entry"))?;
        let prefix = pkl[..pkl.len() - "data.pkl".len()].to_string();
        let pkl_bytes = read_entry(&mut archive, &pkl, path)?;
        let (pickle, _) = pickle::unpickle(&pkl_bytes, path).map_err(|e| match e {
            Error::Format { reason, .. } => Error::format(path, FORMAT, format!("in {pkl}: {reason}")),
            other => other,
        })?;
        let byteorder = format!("{prefix}byteorder");
        let big_endian = if archive.index_for_name(&byteorder).is_some() {
            match read_entry(&mut archive, &byteorder, path)?.as_slice() {
                b"little" => false,
                b"big" => true,
                other => {
                    return Err(Error::format(
                        path,
                        FORMAT,
                        format!("unknown byte order '{}'", String::from_utf8_lossy(other)),
                    ))
                }
            }
        } else {
            false
        };
        Ok(ZipPth {
            path: path.to_path_buf(),
            archive,
            prefix,
            pickle,
            big_endian,
        })
    }

    fn storage(&mut self, key: &str) -> Result<Vec<u8>> {
        let name = format!("{}data/{key}", self.prefix);
        if self.archive.index_for_name(&name).is_none() {
            return Err(Error::format(
                &self.path,
                FORMAT,
                format!("storage '{key}' is referenced but the archive has no entry {name}"),
            ));
        }
        read_entry(&mut self.archive, &name, &self.path)
    }
}

fn read_entry(archive: &mut zip::ZipArchive<File>, name: &str, path: &Path) -> Result<Vec<u8>> {
    let bad = |e: String| Error::format(path, FORMAT, format!("zip entry {name}: {e}"));
    let mut f = archive.by_name(name).map_err(|e| bad(e.to_string()))?;
    let declared = f.size();
    // Capacity from the declared size, capped: a forged header must not reserve gigabytes.
    let mut buf = Vec::with_capacity(declared.min(1 << 26) as usize);
    // One byte past the declared size, so the reader reaches its end and checks the CRC, and
    // an entry that inflates beyond its declared size is caught instead of read without bound.
    (&mut f)
        .take(declared.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| bad(e.to_string()))?;
    if buf.len() as u64 != declared {
        return Err(bad(format!("holds {} bytes, its header says {declared}", buf.len())));
    }
    Ok(buf)
}

struct LegacyPth {
    pickle: Unpickled,
    /// Byte range of each storage's data within the file.
    ranges: HashMap<String, Range<usize>>,
    big_endian: bool,
}

fn parse_legacy(bytes: &[u8], path: &Path) -> Result<LegacyPth> {
    let fail = |reason: String| Error::format(path, FORMAT, reason);
    let mut pos = 0usize;
    let mut next = |what: &str| -> Result<Unpickled> {
        let (u, used) = pickle::unpickle(&bytes[pos..], path).map_err(|e| match e {
            Error::Format { reason, .. } => fail(format!("in the {what} pickle starting at byte {pos}: {reason}")),
            other => other,
        })?;
        pos += used;
        Ok(u)
    };
    let magic = next("magic number")?;
    if !matches!(magic.get(magic.root), Obj::BigInt(b) if b.as_slice() == LEGACY_MAGIC) {
        return Err(fail(
            "the first pickle is not torch's magic number: not a torch.save file".into(),
        ));
    }
    let protocol = next("protocol version")?;
    match protocol.get(protocol.root) {
        Obj::Int(LEGACY_PROTOCOL) => {}
        other => {
            return Err(fail(format!(
                "unsupported legacy protocol version {other:?}, expected 1001"
            )))
        }
    }
    let sys_info = next("system info")?;
    let big_endian = dict_get(&sys_info, sys_info.root, "little_endian")
        .map(|id| matches!(sys_info.get(id), Obj::Bool(false)))
        .unwrap_or(false);
    let pickle = next("object")?;
    let keys_pickle = next("storage keys")?;
    let keys: Vec<String> = match keys_pickle.get(keys_pickle.root) {
        Obj::List(ids) => ids
            .iter()
            .map(|&id| keys_pickle.str_at(id).map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| fail("the storage key list holds a non-string".into()))?,
        other => return Err(fail(format!("the storage key list is a {other:?}"))),
    };

    // Each storage's element size comes from the type the object pickle gave it.
    let mut dtypes: HashMap<&str, StorageDtype> = HashMap::new();
    for s in pickle.storages() {
        if let Some(d) = dtypes.insert(&s.key, s.dtype) {
            if d != s.dtype {
                return Err(fail(format!(
                    "storage '{}' is used as both {d:?} and {:?}",
                    s.key, s.dtype
                )));
            }
        }
    }
    let mut ranges = HashMap::new();
    for key in &keys {
        let dtype = dtypes
            .get(key.as_str())
            .ok_or_else(|| fail(format!("storage '{key}' is listed but no tensor uses it")))?;
        let head = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| fail(format!("the file ends before storage '{key}' (truncated file?)")))?;
        let head: [u8; 8] = head.try_into().expect("slice of length 8");
        let count = if big_endian {
            u64::from_be_bytes(head)
        } else {
            u64::from_le_bytes(head)
        };
        pos += 8;
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(dtype.size()))
            .filter(|&n| n <= bytes.len() - pos)
            .ok_or_else(|| {
                fail(format!(
                    "storage '{key}' claims {count} elements but only {} bytes are left (truncated file?)",
                    bytes.len() - pos
                ))
            })?;
        ranges.insert(key.clone(), pos..pos + len);
        pos += len;
    }
    Ok(LegacyPth {
        pickle,
        ranges,
        big_endian,
    })
}

/// The value under string key `key` of the dict at `dict` (the last one, as in Python).
fn dict_get(u: &Unpickled, dict: Id, key: &str) -> Option<Id> {
    match u.get(dict) {
        Obj::Dict(pairs) => pairs
            .iter()
            .rev()
            .find(|(k, _)| u.str_at(*k) == Some(key))
            .map(|&(_, v)| v),
        _ => None,
    }
}

/// The named tensors of the pickle's state_dict, in pickle order (see the module docs).
fn select_tensors(u: &Unpickled, path: &Path) -> Result<Vec<(String, TensorSpec)>> {
    let pairs = match u.get(u.root) {
        Obj::Dict(pairs) => pairs,
        Obj::Tensor(_) => {
            return Err(Error::format(
                path,
                FORMAT,
                "the file holds a single unnamed tensor, not a dict of named tensors; \
                 re-save it as {\"name\": tensor}",
            ))
        }
        other => {
            return Err(Error::format(
                path,
                FORMAT,
                format!("the file holds a {}, not a dict of named tensors", other.kind()),
            ))
        }
    };
    let has_tensor = pairs.iter().any(|&(_, v)| matches!(u.get(v), Obj::Tensor(_)));
    let target = if has_tensor {
        u.root
    } else {
        WRAPPER_KEYS
            .iter()
            .filter_map(|k| dict_get(u, u.root, k))
            .find(|&v| matches!(u.get(v), Obj::Dict(_)))
            .unwrap_or(u.root)
    };
    // A pickle can share one dict many times over (a DAG whose unfolding is exponential),
    // nest a dict in itself, or nest thousands deep with long memoised keys. A real state_dict
    // is a shallow tree whose names are about as long as the pickle text that spells them, so
    // entry visits and name bytes are bounded by multiples of what the pickle holds.
    let entries: usize = u
        .objs
        .iter()
        .map(|o| if let Obj::Dict(p) = o { p.len() } else { 0 })
        .sum();
    let mut f = Flattener {
        u,
        path,
        out: Vec::new(),
        names: HashSet::new(),
        on_path: Vec::new(),
        entries_left: entries.saturating_mul(4).saturating_add(64),
        name_bytes_left: u.input_len.saturating_mul(16).saturating_add(1 << 16),
    };
    f.flatten(target, "")?;
    Ok(f.out)
}

/// Dicts nest at most this deep below the selected state_dict.
const MAX_DEPTH: usize = 32;

struct Flattener<'a> {
    u: &'a Unpickled,
    path: &'a Path,
    out: Vec<(String, TensorSpec)>,
    names: HashSet<String>,
    on_path: Vec<Id>,
    entries_left: usize,
    name_bytes_left: usize,
}

impl Flattener<'_> {
    fn fail(&self, reason: String) -> Error {
        Error::format(self.path, FORMAT, reason)
    }

    fn flatten(&mut self, dict: Id, prefix: &str) -> Result<()> {
        let u = self.u;
        let Obj::Dict(pairs) = u.get(dict) else { return Ok(()) };
        if self.on_path.contains(&dict) {
            return Err(self.fail(format!("the dict at '{prefix}' contains itself")));
        }
        if self.on_path.len() >= MAX_DEPTH {
            return Err(self.fail(format!("dicts nest more than {MAX_DEPTH} deep at '{prefix}'")));
        }
        self.on_path.push(dict);
        for &(k, v) in pairs {
            self.entries_left = self
                .entries_left
                .checked_sub(1)
                .ok_or_else(|| self.fail("nested dicts are shared too many times to flatten".into()))?;
            let value = u.get(v);
            if !matches!(value, Obj::Tensor(_) | Obj::Dict(_)) {
                continue;
            }
            let name = match u.get(k) {
                Obj::Str(s) => format!("{prefix}{s}"),
                Obj::Int(i) => format!("{prefix}{i}"),
                _ => continue,
            };
            self.name_bytes_left = self
                .name_bytes_left
                .checked_sub(name.len())
                .ok_or_else(|| self.fail("flattened names are implausibly long for the pickle's size".into()))?;
            match value {
                Obj::Tensor(spec) => {
                    if !self.names.insert(name.clone()) {
                        return Err(self.fail(format!("two tensors are named '{name}'")));
                    }
                    self.out.push((name, spec.clone()));
                }
                _ => self.flatten(v, &format!("{name}."))?,
            }
        }
        self.on_path.pop();
        Ok(())
    }
}

/// Build one tensor, charging its size in file bytes (elements times the storage's element
/// size) against `budget`.
fn build_one(
    path: &Path,
    name: &str,
    spec: &TensorSpec,
    storage: Option<&[u8]>,
    big_endian: bool,
    budget: &mut usize,
) -> Result<Tensor> {
    let fail = |reason: String| Error::format(path, FORMAT, format!("tensor '{name}': {reason}"));
    let bytes = storage.ok_or_else(|| fail(format!("its storage '{}' is missing from the file", spec.storage.key)))?;
    let cost = spec
        .shape
        .iter()
        .try_fold(spec.storage.dtype.size(), |a, &d| a.checked_mul(d))
        .filter(|&c| c <= *budget)
        .ok_or_else(|| {
            fail(format!(
                "shape {:?} takes the tensors of this file past {OUTPUT_FACTOR} times the size of its \
                 storages; a file that views one storage that many times is refused",
                spec.shape
            ))
        })?;
    *budget -= cost;
    build_tensor(spec, bytes, big_endian).map_err(fail)
}

/// Materialise a strided view of a storage as a contiguous candle tensor.
fn build_tensor(spec: &TensorSpec, bytes: &[u8], big_endian: bool) -> std::result::Result<Tensor, String> {
    let dtype = spec.storage.dtype;
    let es = dtype.size();
    if bytes.len() % es != 0 {
        return Err(format!(
            "its storage holds {} bytes, not a whole number of {dtype:?} elements",
            bytes.len()
        ));
    }
    let total = bytes.len() / es;
    let base = spec.storage.base;
    let len = spec.storage.len.unwrap_or(total.saturating_sub(base));
    if base > total || len > total - base {
        return Err(format!(
            "storage view [{base}, {base}+{len}) lies outside a storage of {total} elements"
        ));
    }
    let window = &bytes[base * es..(base + len) * es];
    let numel = spec
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {:?} overflows", spec.shape))?;
    if numel == 0 {
        return Tensor::zeros(spec.shape.clone(), dtype.candle_dtype(), &Device::Cpu).map_err(|e| e.to_string());
    }
    let last = spec
        .shape
        .iter()
        .zip(&spec.stride)
        .try_fold(spec.offset, |acc, (&d, &s)| {
            (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
        })
        .filter(|&m| m < len)
        .ok_or_else(|| {
            format!(
                "offset {} with shape {:?} and stride {:?} reads past its storage of {len} elements",
                spec.offset, spec.shape, spec.stride
            )
        })?;
    debug_assert!(last < len);
    if numel > len && numel > MAX_EXPANDED_ELEMENTS {
        return Err(format!(
            "shape {:?} repeats a storage of {len} elements {numel} times over; refusing to materialise it",
            spec.shape
        ));
    }
    let data = gather(window, es, spec.offset, &spec.shape, &spec.stride, numel);
    decode(&data, dtype, big_endian, spec.shape.clone()).map_err(|e| e.to_string())
}

/// Copy the elements of a strided view, in row-major order, into a contiguous buffer.
/// The caller has checked that the largest index lies inside `window`.
fn gather(window: &[u8], es: usize, offset: usize, shape: &[usize], stride: &[usize], numel: usize) -> Vec<u8> {
    let nd = shape.len();
    let contiguous = {
        let mut expect = 1;
        let mut ok = true;
        for d in (0..nd).rev() {
            ok &= shape[d] == 1 || stride[d] == expect;
            expect *= shape[d];
        }
        ok
    };
    if contiguous {
        return window[offset * es..(offset + numel) * es].to_vec();
    }
    let mut out = Vec::with_capacity(numel * es);
    let (inner, inner_stride) = (shape[nd - 1], stride[nd - 1]);
    let mut idx = vec![0usize; nd - 1];
    loop {
        let start = offset + idx.iter().zip(stride).map(|(&i, &s)| i * s).sum::<usize>();
        if inner_stride == 1 {
            out.extend_from_slice(&window[start * es..(start + inner) * es]);
        } else {
            for i in 0..inner {
                let e = start + i * inner_stride;
                out.extend_from_slice(&window[e * es..(e + 1) * es]);
            }
        }
        // Odometer increment over the outer dimensions.
        let mut d = nd - 1;
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

fn words<const N: usize, T>(bytes: &[u8], big_endian: bool, f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            if big_endian {
                a.reverse();
            }
            f(a)
        })
        .collect()
}

fn decode(b: &[u8], dtype: StorageDtype, be: bool, shape: Vec<usize>) -> candle_core::Result<Tensor> {
    let dev = &Device::Cpu;
    match dtype {
        StorageDtype::F32 => Tensor::from_vec(words(b, be, f32::from_le_bytes), shape, dev),
        StorageDtype::F64 => Tensor::from_vec(words(b, be, f64::from_le_bytes), shape, dev),
        StorageDtype::F16 => Tensor::from_vec(
            words(b, be, |a| half::f16::from_bits(u16::from_le_bytes(a))),
            shape,
            dev,
        ),
        StorageDtype::BF16 => Tensor::from_vec(
            words(b, be, |a| half::bf16::from_bits(u16::from_le_bytes(a))),
            shape,
            dev,
        ),
        StorageDtype::I64 => Tensor::from_vec(words(b, be, i64::from_le_bytes), shape, dev),
        StorageDtype::I32 => Tensor::from_vec(words(b, be, |a| i32::from_le_bytes(a) as i64), shape, dev),
        StorageDtype::I16 => Tensor::from_vec(words(b, be, |a| i16::from_le_bytes(a) as i64), shape, dev),
        StorageDtype::I8 => Tensor::from_vec(b.iter().map(|&x| x as i8 as i64).collect::<Vec<_>>(), shape, dev),
        StorageDtype::U8 => Tensor::from_vec(b.to_vec(), shape, dev),
        StorageDtype::Bool => Tensor::from_vec(b.iter().map(|&x| (x != 0) as u8).collect::<Vec<_>>(), shape, dev),
    }
}

#[cfg(test)]
mod tests {
    use super::pickle::StorageRef;
    use super::*;

    fn spec(offset: usize, shape: &[usize], stride: &[usize]) -> TensorSpec {
        TensorSpec {
            storage: StorageRef {
                key: "0".into(),
                dtype: StorageDtype::F32,
                base: 0,
                len: None,
            },
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    fn f32_bytes(n: usize) -> Vec<u8> {
        (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
    }

    #[test]
    fn gathers_strided_views() {
        let b = f32_bytes(12);
        let t = build_tensor(&spec(0, &[4, 3], &[1, 4]), &b, false).unwrap();
        assert_eq!(t.to_vec2::<f32>().unwrap()[1], vec![1.0, 5.0, 9.0]);
        let t = build_tensor(&spec(1, &[2, 2], &[6, 2]), &b, false).unwrap();
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, 3.0, 7.0, 9.0]
        );
        let t = build_tensor(&spec(2, &[2, 3], &[0, 1]), &b, false).unwrap();
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![2.0, 3.0, 4.0, 2.0, 3.0, 4.0]
        );
        let t = build_tensor(&spec(5, &[], &[]), &b, false).unwrap();
        assert_eq!(t.to_scalar::<f32>().unwrap(), 5.0);
    }

    #[test]
    fn rejects_views_past_the_storage() {
        let b = f32_bytes(6);
        assert!(build_tensor(&spec(0, &[2, 4], &[4, 1]), &b, false).is_err());
        assert!(build_tensor(&spec(6, &[1], &[1]), &b, false).is_err());
        assert!(build_tensor(&spec(0, &[usize::MAX, 2], &[1, 1]), &b, false).is_err());
        assert!(build_tensor(&spec(0, &[1 << 20, 1 << 20], &[0, 0]), &b, false).is_err());
        assert!(build_tensor(&spec(0, &[2], &[1]), &b[..5], false).is_err());
    }

    #[test]
    fn legacy_storage_views_and_big_endian() {
        let mut s = spec(1, &[2], &[1]);
        s.storage.base = 2;
        s.storage.len = Some(3);
        let t = build_tensor(&s, &f32_bytes(6), false).unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), vec![3.0, 4.0]);
        s.offset = 2;
        assert!(build_tensor(&s, &f32_bytes(6), false).is_err());
        let be: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|v| v.to_be_bytes()).collect();
        let t = build_tensor(&spec(0, &[2], &[1]), &be, true).unwrap();
        assert_eq!(t.to_vec1::<f32>().unwrap(), vec![1.5, -2.0]);
    }

    /// An arena with one tensor (id 0) and strings for keys, plus whatever `extra` adds;
    /// returns it with the root set to the last object.
    fn arena(extra: impl FnOnce(&mut Vec<Obj>)) -> Unpickled {
        let mut objs = vec![Obj::Tensor(spec(0, &[2], &[1]))];
        extra(&mut objs);
        let root = objs.len() - 1;
        Unpickled {
            objs,
            root,
            input_len: 100,
        }
    }

    fn push(objs: &mut Vec<Obj>, o: Obj) -> Id {
        objs.push(o);
        objs.len() - 1
    }

    fn names(u: &Unpickled) -> Result<Vec<String>> {
        Ok(select_tensors(u, Path::new("t.pth"))?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    #[test]
    fn selects_the_state_dict_of_a_checkpoint() {
        // {"epoch": 3, "model": "resnet", "state_dict": {"w": t, "sub": {"b": t}}, "opt": {"x": t}}
        let u = arena(|o| {
            let (w, sub, b, sd, opt, x) = (
                push(o, Obj::Str("w".into())),
                push(o, Obj::Str("sub".into())),
                push(o, Obj::Str("b".into())),
                push(o, Obj::Str("state_dict".into())),
                push(o, Obj::Str("opt".into())),
                push(o, Obj::Str("x".into())),
            );
            let (epoch, three, model, resnet) = (
                push(o, Obj::Str("epoch".into())),
                push(o, Obj::Int(3)),
                push(o, Obj::Str("model".into())),
                push(o, Obj::Str("resnet".into())),
            );
            let inner = push(o, Obj::Dict(vec![(b, 0)]));
            let state = push(o, Obj::Dict(vec![(w, 0), (sub, inner)]));
            let optd = push(o, Obj::Dict(vec![(x, 0)]));
            o.push(Obj::Dict(vec![
                (epoch, three),
                (model, resnet),
                (sd, state),
                (opt, optd),
            ]));
        });
        assert_eq!(names(&u).unwrap(), ["w", "sub.b"]);

        // A top-level tensor makes the top-level dict the state_dict, wrapper keys and all.
        let u = arena(|o| {
            let (a, sd) = (push(o, Obj::Str("a".into())), push(o, Obj::Str("state_dict".into())));
            let (w, int_key) = (push(o, Obj::Str("w".into())), push(o, Obj::Int(0)));
            let inner = push(o, Obj::Dict(vec![(w, 0), (int_key, 0)]));
            o.push(Obj::Dict(vec![(a, 0), (sd, inner)]));
        });
        assert_eq!(names(&u).unwrap(), ["a", "state_dict.w", "state_dict.0"]);
    }

    #[test]
    fn flattening_refuses_cycles_bombs_and_clashes() {
        let fmt = |r: Result<Vec<String>>| matches!(r, Err(Error::Format { .. }));
        // A dict that contains itself.
        let u = arena(|o| {
            let k = push(o, Obj::Str("me".into()));
            let d = o.len();
            o.push(Obj::Dict(vec![(k, d)]));
        });
        assert!(fmt(names(&u)));
        // 40 dicts, each holding the next twice: 2^40 paths from 80 entries.
        let u = arena(|o| {
            let (a, b) = (push(o, Obj::Str("a".into())), push(o, Obj::Str("b".into())));
            let mut inner = push(o, Obj::Dict(vec![(a, 0)]));
            for _ in 0..40 {
                inner = push(o, Obj::Dict(vec![(a, inner), (b, inner)]));
            }
        });
        assert!(fmt(names(&u)));
        // Nesting deeper than any real checkpoint.
        let u = arena(|o| {
            let a = push(o, Obj::Str("a".into()));
            let mut inner = push(o, Obj::Dict(vec![(a, 0)]));
            for _ in 0..MAX_DEPTH + 1 {
                inner = push(o, Obj::Dict(vec![(a, inner)]));
            }
        });
        assert!(fmt(names(&u)));
        // "a.b" spelled flat and nested.
        let u = arena(|o| {
            let (ab, a, b) = (
                push(o, Obj::Str("a.b".into())),
                push(o, Obj::Str("a".into())),
                push(o, Obj::Str("b".into())),
            );
            let inner = push(o, Obj::Dict(vec![(b, 0)]));
            o.push(Obj::Dict(vec![(ab, 0), (a, inner)]));
        });
        assert!(fmt(names(&u)));
        // A bare tensor or list at the top level.
        let u = arena(|_| {});
        assert!(fmt(names(&u)));
    }

    #[test]
    fn output_is_bounded_by_the_storages() {
        let b = f32_bytes(4);
        let mut budget = 3 * 4 * 4;
        let s = spec(0, &[4], &[1]);
        for _ in 0..3 {
            build_one(Path::new("t"), "x", &s, Some(&b), false, &mut budget).unwrap();
        }
        assert_eq!(budget, 0);
        let e = build_one(Path::new("t"), "x", &s, Some(&b), false, &mut budget).unwrap_err();
        assert!(matches!(e, Error::Format { .. }), "{e}");
        let e = build_one(Path::new("t"), "x", &s, None, false, &mut 1000).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
