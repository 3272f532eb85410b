//! A tensor-only unpickler for the pickles `torch.save` writes (protocols 2 to 5).
//!
//! Python's own unpickler imports and calls whatever a pickle names, which is how trojaned
//! checkpoints run code. This one is a closed world: it knows a short allow-list of globals
//! (the tensor rebuild functions, storage types, `OrderedDict`) as inert markers, refuses the
//! whole file the moment any other global appears, and never calls anything. What it builds
//! is plain data: numbers, strings, containers, and tensor *descriptions* (storage key, dtype,
//! offset, shape, stride) whose bytes the caller fetches from the archive.
//!
//! Objects live in an arena and refer to each other by index, so that the memo shares
//! containers the way Python does (a dict filled after it was memoised is seen filled
//! through every reference) without reference cycles in Rust. Every opcode consumes at least
//! one input byte and creates at most one object, so the arena, stack, marks and memo are
//! all bounded by the input size; there are no backward jumps, so parsing always terminates.

use crate::error::{Error, Result};
use candle_core::DType;
use std::collections::HashMap;
use std::path::Path;

/// Index of an object in [`Unpickled::objs`].
pub(crate) type Id = usize;

/// The element type of a torch storage, as named by its `torch.*Storage` class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum StorageDtype {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// Bytes per element in the file.
    pub(crate) fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// The candle dtype a tensor of this storage is loaded as.
    ///
    /// candle's integer support is centred on I64 and U8, so narrower signed integers are
    /// widened (losslessly) to I64, and bool becomes U8 0/1, the mask type `where_cond` takes.
    pub(crate) fn candle_dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F64 => DType::F64,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
            Self::I64 | Self::I32 | Self::I16 | Self::I8 => DType::I64,
            Self::U8 | Self::Bool => DType::U8,
        }
    }
}

/// An allow-listed global. Resolving one never imports or runs anything: it is a tag that
/// REDUCE, NEWOBJ and the persistent-id decoder interpret themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    TorchSize,
    /// `torch.Tensor` or `torch.nn.Parameter`, only ever an argument of `_rebuild_from_type_v2`.
    TensorClass,
    Storage(StorageDtype),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Option<Self> {
        Some(match (module, name) {
            ("collections", "OrderedDict") => Self::OrderedDict,
            ("torch._utils", "_rebuild_tensor") => Self::RebuildTensor,
            ("torch._utils", "_rebuild_tensor_v2") => Self::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Self::RebuildParameter,
            ("torch._utils", "_rebuild_parameter_with_state") => Self::RebuildParameterWithState,
            ("torch._tensor", "_rebuild_from_type_v2") => Self::RebuildFromTypeV2,
            ("torch", "Size") => Self::TorchSize,
            ("torch", "Tensor") | ("torch._tensor", "Tensor") => Self::TensorClass,
            ("torch.nn.parameter", "Parameter") => Self::TensorClass,
            ("torch", storage) => Self::Storage(StorageDtype::from_storage_class(storage)?),
            _ => return None,
        })
    }
}

/// A reference to (part of) a serialised storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageRef {
    /// The key naming the storage's bytes in the file (`data/<key>` in a zip archive).
    pub key: String,
    pub dtype: StorageDtype,
    /// Element offset of this storage within the keyed bytes: non-zero only for the storage
    /// views that torch < 1.0 wrote in the legacy format.
    pub base: usize,
    /// Element count of such a view; `None` means "to the end of the keyed bytes".
    pub len: Option<usize>,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a strided window onto a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorSpec {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A Python value the unpickler can represent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Obj {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64, as little-endian two's-complement bytes (the legacy magic number).
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    /// (key, value) pairs in pickle order. Pickles of real dicts never repeat a key; readers
    /// that look a key up take the last pair, as Python's SETITEM would leave it.
    Dict(Vec<(Id, Id)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorSpec),
}

impl Obj {
    /// The Python type name, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Obj::None => "None",
            Obj::Bool(_) => "bool",
            Obj::Int(_) | Obj::BigInt(_) => "int",
            Obj::Float(_) => "float",
            Obj::Str(_) => "str",
            Obj::Bytes(_) => "bytes",
            Obj::Tuple(_) => "tuple",
            Obj::List(_) => "list",
            Obj::Dict(_) => "dict",
            Obj::Global(_) => "global",
            Obj::Storage(_) => "storage",
            Obj::Tensor(_) => "tensor",
        }
    }
}

/// The result of unpickling: every object built, and the one the pickle returned.
#[derive(Debug)]
pub(crate) struct Unpickled {
    pub objs: Vec<Obj>,
    pub root: Id,
    /// Bytes of pickle consumed, for callers that bound their own work by input size.
    pub input_len: usize,
}

impl Unpickled {
    /// The object at `id`.
    pub(crate) fn get(&self, id: Id) -> &Obj {
        &self.objs[id]
    }

    /// The string at `id`, if it is one.
    pub(crate) fn str_at(&self, id: Id) -> Option<&str> {
        match &self.objs[id] {
            Obj::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Every storage referenced anywhere in the pickle.
    pub(crate) fn storages(&self) -> impl Iterator<Item = &StorageRef> {
        self.objs.iter().filter_map(|o| match o {
            Obj::Storage(s) => Some(s),
            _ => None,
        })
    }
}

/// Unpickle one pickle starting at the beginning of `data`.
///
/// Returns the objects and the number of bytes consumed up to and including STOP, so a
/// caller can read several pickles back to back (the legacy `.pth` layout). `path` is only
/// used to name the file in errors.
pub(crate) fn unpickle(data: &[u8], path: &Path) -> Result<(Unpickled, usize)> {
    let mut m = Machine {
        data,
        pos: 0,
        path,
        objs: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = m.run()?;
    let used = m.pos;
    Ok((
        Unpickled {
            objs: m.objs,
            root,
            input_len: used,
        },
        used,
    ))
}

const FORMAT: &str = "PyTorch pickle";

/// Tensor rank limit; torch's own limit is lower.
const MAX_DIMS: usize = 64;
/// Storage key length limit; torch's keys are short decimal numbers.
const MAX_KEY_LEN: usize = 256;

/// What an allow-listed call produced: a new object, or one that already exists.
enum Made {
    New(Obj),
    Existing(Id),
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    path: &'a Path,
    objs: Vec<Obj>,
    stack: Vec<Id>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    /// Keyed by u32 as in the format; a HashMap so a huge LONG_BINPUT index costs nothing.
    memo: HashMap<u32, Id>,
}

impl<'a> Machine<'a> {
    fn fail(&self, reason: impl std::fmt::Display) -> Error {
        Error::format(self.path, FORMAT, format!("{reason} (pickle offset {})", self.pos))
    }

    fn unsafe_global(&self, module: &str, name: &str) -> Error {
        Error::UnsafePickle {
            path: self.path.to_path_buf(),
            reason: format!(
                "it references the global `{module}.{name}`, which is not on the tensor \
                 allow-list (OrderedDict, torch storage types, torch._utils._rebuild_*)"
            ),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.data.len() - self.pos {
            return Err(self.fail(format!(
                "the pickle ends early: {n} bytes needed, {} left (truncated file?)",
                self.data.len() - self.pos
            )));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn len_u64(&mut self) -> Result<usize> {
        let n = u64::from_le_bytes(self.array()?);
        // Anything beyond the remaining input is caught by `take`; this only guards 32-bit usize.
        usize::try_from(n).map_err(|_| self.fail(format!("length {n} is beyond this platform")))
    }

    /// One newline-terminated ASCII line, as GLOBAL and INST arguments are written.
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.fail("the pickle ends inside a global name (truncated file?)"))?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| self.fail("a global name is not UTF-8"))?;
        self.pos += end + 1;
        Ok(s)
    }

    fn utf8(&self, bytes: &[u8]) -> Result<String> {
        String::from_utf8(bytes.to_vec()).map_err(|_| self.fail("a string is not valid UTF-8"))
    }

    fn new_obj(&mut self, o: Obj) -> Id {
        self.objs.push(o);
        self.objs.len() - 1
    }

    fn push(&mut self, o: Obj) {
        let id = self.new_obj(o);
        self.stack.push(id);
    }

    fn pop(&mut self) -> Result<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.fail("stack underflow"));
        }
        Ok(self.stack.pop().expect("checked non-empty above"))
    }

    fn top(&self) -> Result<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.fail("stack underflow"));
        }
        Ok(self.stack[self.stack.len() - 1])
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let mark = self.marks.pop().ok_or_else(|| self.fail("no MARK to pop to"))?;
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&self, key: u32) -> Result<Id> {
        self.memo
            .get(&key)
            .copied()
            .ok_or_else(|| self.fail(format!("memo entry {key} read before it was written")))
    }

    fn memo_put(&mut self, key: u32) -> Result<()> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn int(&mut self, bytes: &[u8]) -> Obj {
        // Python longs are little-endian two's complement of minimal length.
        let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
        let fill = if negative { 0xff } else { 0 };
        if bytes.len() <= 8 || bytes[8..].iter().all(|&b| b == fill) && (bytes[7] & 0x80 != 0) == negative {
            let mut a = [fill; 8];
            let n = bytes.len().min(8);
            a[..n].copy_from_slice(&bytes[..n]);
            Obj::Int(i64::from_le_bytes(a))
        } else {
            Obj::BigInt(bytes.to_vec())
        }
    }

    fn dict_of(&self, id: Id, op: &str) -> Result<()> {
        match &self.objs[id] {
            Obj::Dict(_) => Ok(()),
            o => Err(self.fail(format!("{op} on a {}, not a dict", o.kind()))),
        }
    }

    fn set_items(&mut self, dict: Id, items: Vec<Id>) -> Result<()> {
        self.dict_of(dict, "SETITEMS")?;
        if items.len() % 2 != 0 {
            return Err(self.fail("SETITEMS with an odd number of items"));
        }
        let pairs: Vec<(Id, Id)> = items.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        if let Obj::Dict(d) = &mut self.objs[dict] {
            d.extend(pairs);
        }
        Ok(())
    }

    fn append(&mut self, list: Id, items: Vec<Id>) -> Result<()> {
        match &mut self.objs[list] {
            Obj::List(l) => {
                l.extend(items);
                Ok(())
            }
            o => {
                let kind = o.kind();
                Err(self.fail(format!("APPEND on a {kind}, not a list")))
            }
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        match Global::resolve(module, name) {
            Some(g) => {
                self.push(Obj::Global(g));
                Ok(())
            }
            None => Err(self.unsafe_global(module, name)),
        }
    }

    fn usize_at(&self, id: Id, what: &str) -> Result<usize> {
        match self.objs[id] {
            Obj::Int(i) if i >= 0 => usize::try_from(i).map_err(|_| self.fail(format!("{what} {i} is too large"))),
            Obj::Int(i) => Err(self.fail(format!("{what} is negative ({i})"))),
            ref o => Err(self.fail(format!("{what} is a {}, not an int", o.kind()))),
        }
    }

    fn usizes_at(&self, id: Id, what: &str) -> Result<Vec<usize>> {
        match &self.objs[id] {
            Obj::Tuple(items) | Obj::List(items) => items.iter().map(|&i| self.usize_at(i, what)).collect(),
            o => Err(self.fail(format!("{what} is a {}, not a tuple", o.kind()))),
        }
    }

    fn tuple_at(&self, id: Id, what: &str) -> Result<Vec<Id>> {
        match &self.objs[id] {
            Obj::Tuple(items) => Ok(items.clone()),
            o => Err(self.fail(format!("{what} is a {}, not a tuple", o.kind()))),
        }
    }

    /// Decode a BINPERSID id: torch writes `('storage', StorageType, key, location, numel)`,
    /// with a sixth `view_metadata` element in the legacy format.
    fn persistent(&mut self, pid: Id) -> Result<Obj> {
        let items = self.tuple_at(pid, "persistent id")?;
        match items.first().map(|&i| &self.objs[i]) {
            Some(Obj::Str(s)) if s == "storage" => {}
            Some(Obj::Str(s)) => return Err(self.fail(format!("unsupported persistent id kind '{s}'"))),
            _ => return Err(self.fail("persistent id does not start with a string")),
        }
        if items.len() < 5 || items.len() > 6 {
            return Err(self.fail(format!(
                "storage persistent id has {} fields, expected 5 or 6",
                items.len()
            )));
        }
        let dtype = match self.objs[items[1]] {
            Obj::Global(Global::Storage(d)) => d,
            ref o => return Err(self.fail(format!("storage type is a {}, not a torch storage class", o.kind()))),
        };
        let key = match &self.objs[items[2]] {
            // Every tensor of the storage holds a copy of its key, so the key must be short.
            Obj::Str(s) if s.len() > MAX_KEY_LEN => {
                return Err(self.fail(format!("storage key of {} bytes, more than {MAX_KEY_LEN}", s.len())))
            }
            Obj::Str(s) => s.clone(),
            Obj::Int(i) => i.to_string(),
            o => return Err(self.fail(format!("storage key is a {}", o.kind()))),
        };
        let (base, len) = match items.get(5).map(|&i| (i, &self.objs[i])) {
            None | Some((_, Obj::None)) => (0, None),
            Some((view, _)) => {
                let v = self.tuple_at(view, "storage view")?;
                if v.len() != 3 {
                    return Err(self.fail("storage view metadata does not have 3 fields"));
                }
                (
                    self.usize_at(v[1], "storage view offset")?,
                    Some(self.usize_at(v[2], "storage view size")?),
                )
            }
        };
        Ok(Obj::Storage(StorageRef { key, dtype, base, len }))
    }

    fn rebuild_tensor(&self, args: &[Id]) -> Result<Obj> {
        if args.len() < 4 {
            return Err(self.fail(format!(
                "tensor rebuild with {} arguments, expected at least 4",
                args.len()
            )));
        }
        let storage = match &self.objs[args[0]] {
            Obj::Storage(s) => s.clone(),
            o => return Err(self.fail(format!("tensor rebuilt from a {}, not a storage", o.kind()))),
        };
        let offset = self.usize_at(args[1], "storage offset")?;
        let shape = self.usizes_at(args[2], "tensor size")?;
        let stride = self.usizes_at(args[3], "tensor stride")?;
        if shape.len() != stride.len() {
            return Err(self.fail(format!("tensor has {} sizes but {} strides", shape.len(), stride.len())));
        }
        // Keeps every tensor description small, however often a pickle re-uses one size tuple.
        if shape.len() > MAX_DIMS {
            return Err(self.fail(format!("tensor has {} dimensions, more than {MAX_DIMS}", shape.len())));
        }
        Ok(Obj::Tensor(TensorSpec {
            storage,
            offset,
            shape,
            stride,
        }))
    }

    /// Apply an allow-listed callable: the only "calls" this unpickler ever makes.
    fn call(&self, func: Id, args: Id) -> Result<Made> {
        let g = match self.objs[func] {
            Obj::Global(g) => g,
            ref o => return Err(self.fail(format!("REDUCE calls a {}, which is not callable", o.kind()))),
        };
        let a = self.tuple_at(args, "REDUCE arguments")?;
        match g {
            // torch writes `OrderedDict()` and fills it with SETITEMS; the list-of-pairs form
            // would copy a (possibly memo-shared) list on every call, a memory amplifier.
            Global::OrderedDict if a.is_empty() => Ok(Made::New(Obj::Dict(Vec::new()))),
            Global::OrderedDict => Err(self.fail("OrderedDict called with arguments, which torch.save never writes")),
            Global::RebuildTensor | Global::RebuildTensorV2 => Ok(Made::New(self.rebuild_tensor(&a)?)),
            Global::RebuildParameter | Global::RebuildParameterWithState => match a.first() {
                // A Parameter is its data for our purposes; sharing the id keeps a parameter
                // and the tensor it wraps one object, and copies nothing.
                Some(&t) if matches!(self.objs[t], Obj::Tensor(_)) => Ok(Made::Existing(t)),
                Some(&t) => Err(self.fail(format!(
                    "parameter rebuilt from a {}, not a tensor",
                    self.objs[t].kind()
                ))),
                None => Err(self.fail("parameter rebuild without arguments")),
            },
            Global::RebuildFromTypeV2 => {
                // (func, new_type, args, state): the subclass and its Python state do not
                // change the data, so only the inner rebuild matters.
                if a.len() != 4 {
                    return Err(self.fail("_rebuild_from_type_v2 expects 4 arguments"));
                }
                match self.objs[a[1]] {
                    Obj::Global(Global::TensorClass) => {}
                    ref o => return Err(self.fail(format!("_rebuild_from_type_v2 of a {}", o.kind()))),
                }
                match self.objs[a[0]] {
                    Obj::Global(Global::RebuildTensor | Global::RebuildTensorV2) => Ok(Made::New(
                        self.rebuild_tensor(&self.tuple_at(a[2], "rebuild arguments")?)?,
                    )),
                    _ => Err(self.fail("_rebuild_from_type_v2 with an unsupported inner function")),
                }
            }
            Global::TorchSize => self.torch_size(&a),
            Global::TensorClass | Global::Storage(_) => {
                Err(self.fail("a tensor or storage class is called directly, which torch.save never writes"))
            }
        }
    }

    /// `torch.Size(t)` is the tuple `t`: shared, not copied, as tuples are immutable.
    fn torch_size(&self, a: &[Id]) -> Result<Made> {
        match a {
            [t] if matches!(self.objs[*t], Obj::Tuple(_)) => Ok(Made::Existing(*t)),
            _ => Err(self.fail("torch.Size expects one tuple")),
        }
    }

    /// `cls.__new__(cls, *args)`: only the containers on the allow-list can be created.
    fn new_obj_of(&self, cls: Id, args: Id) -> Result<Made> {
        let a = self.tuple_at(args, "NEWOBJ arguments")?;
        match self.objs[cls] {
            Obj::Global(Global::OrderedDict) => Ok(Made::New(Obj::Dict(Vec::new()))),
            Obj::Global(Global::TorchSize) => self.torch_size(&a),
            ref o => Err(self.fail(format!("NEWOBJ of a {} is not supported", o.kind()))),
        }
    }

    fn push_made(&mut self, m: Made) {
        match m {
            Made::New(o) => self.push(o),
            Made::Existing(id) => self.stack.push(id),
        }
    }

    fn run(&mut self) -> Result<Id> {
        loop {
            let op = self
                .data
                .get(self.pos)
                .copied()
                .ok_or_else(|| self.fail("the pickle ends before its STOP opcode (truncated file?)"))?;
            self.pos += 1;
            match op {
                0x80 => {
                    // PROTO
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.fail(format!("pickle protocol {v} is newer than 5")));
                    }
                }
                0x95 => {
                    // FRAME: framing is only a read-ahead hint; the content follows inline.
                    let n = self.len_u64()?;
                    if n > self.data.len() - self.pos {
                        return Err(self.fail("a frame runs past the end of the pickle (truncated file?)"));
                    }
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'}' => self.push(Obj::Dict(Vec::new())),
                b']' => self.push(Obj::List(Vec::new())),
                b')' => self.push(Obj::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::Tuple(items));
                }
                0x85..=0x87 => {
                    // TUPLE1..TUPLE3
                    let n = (op - 0x84) as usize;
                    let floor = self.marks.last().copied().unwrap_or(0);
                    if self.stack.len() < floor + n {
                        return Err(self.fail("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Obj::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Obj::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let d = self.new_obj(Obj::Dict(Vec::new()));
                    self.set_items(d, items)?;
                    self.stack.push(d);
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append(l, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.append(l, items)?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Obj::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Obj::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Obj::Int(v as i64));
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let bytes = self.take(n)?;
                    let v = self.int(bytes);
                    self.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Obj::Float(v));
                }
                0x88 => self.push(Obj::Bool(true)),
                0x89 => self.push(Obj::Bool(false)),
                b'N' => self.push(Obj::None),
                b'X' | 0x8c | 0x8d => {
                    // BINUNICODE / SHORT_BINUNICODE / BINUNICODE8
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let bytes = self.take(n)?;
                    let s = self.utf8(bytes)?;
                    self.push(Obj::Str(s));
                }
                b'T' | b'U' => {
                    // BINSTRING / SHORT_BINSTRING: Python 2 str, read as text like torch does.
                    let n = if op == b'T' {
                        self.u32()? as usize
                    } else {
                        self.u8()? as usize
                    };
                    let bytes = self.take(n)?;
                    let s = String::from_utf8(bytes.to_vec())
                        .unwrap_or_else(|_| bytes.iter().map(|&b| b as char).collect());
                    self.push(Obj::Str(s));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    // BINBYTES / SHORT_BINBYTES / BINBYTES8 / BYTEARRAY8
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let bytes = self.take(n)?.to_vec();
                    self.push(Obj::Bytes(bytes));
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    // MEMOIZE
                    let k = u32::try_from(self.memo.len()).map_err(|_| self.fail("memo overflow"))?;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    let id = self.memo_get(k)?;
                    self.stack.push(id);
                }
                b'j' => {
                    let k = self.u32()?;
                    let id = self.memo_get(k)?;
                    self.stack.push(id);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let resolved = match (&self.objs[module], &self.objs[name]) {
                        (Obj::Str(m), Obj::Str(n)) => Global::resolve(m, n).ok_or_else(|| self.unsafe_global(m, n)),
                        _ => Err(self.fail("STACK_GLOBAL needs two strings")),
                    };
                    self.push(Obj::Global(resolved?));
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.call(func, args)?;
                    self.push_made(v);
                }
                0x81 => {
                    // NEWOBJ
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.new_obj_of(cls, args)?;
                    self.push_made(v);
                }
                0x92 => {
                    // NEWOBJ_EX
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    if !matches!(&self.objs[kwargs], Obj::Dict(d) if d.is_empty()) {
                        return Err(self.fail("NEWOBJ_EX with keyword arguments is not supported"));
                    }
                    let v = self.new_obj_of(cls, args)?;
                    self.push_made(v);
                }
                b'b' => {
                    // BUILD: the state of an OrderedDict (torch's `_metadata` versions) or of a
                    // tensor subclass carries no tensor data, and applying state to anything
                    // else would mean running its __setstate__.
                    let _state = self.pop()?;
                    let obj = self.top()?;
                    match &self.objs[obj] {
                        Obj::Dict(_) | Obj::Tensor(_) => {}
                        o => return Err(self.fail(format!("BUILD on a {} is not supported", o.kind()))),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.push(v);
                }
                b'i' => {
                    // INST names its class inline, exactly like GLOBAL, then instantiates it.
                    let module = self.line()?;
                    let name = self.line()?;
                    return Err(self.unsafe_global(module, name));
                }
                b'o' => {
                    return Err(Error::UnsafePickle {
                        path: self.path.to_path_buf(),
                        reason: "it instantiates an object with the OBJ opcode".into(),
                    })
                }
                0x82..=0x84 => {
                    return Err(Error::UnsafePickle {
                        path: self.path.to_path_buf(),
                        reason: "it references a global through the copyreg extension registry (EXT opcodes)".into(),
                    })
                }
                b'I' | b'L' | b'F' | b'S' | b'V' | b'p' | b'g' | b'P' | b'a'..=b'z' | b'A'..=b'Z' => {
                    return Err(self.fail(format!(
                        "opcode {:?} (0x{op:02x}) belongs to pickle protocol 0/1, which torch.save does not write",
                        op as char
                    )))
                }
                _ => return Err(self.fail(format!("unknown or unsupported pickle opcode 0x{op:02x}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(bytes: &[u8]) -> Result<Unpickled> {
        unpickle(bytes, Path::new("test.pkl")).map(|(u, _)| u)
    }

    fn root(bytes: &[u8]) -> Obj {
        let u = load(bytes).unwrap();
        u.get(u.root).clone()
    }

    fn global(module: &str, name: &str) -> Vec<u8> {
        format!("c{module}\n{name}\n").into_bytes()
    }

    /// `('storage', torch.FloatStorage, key, 'cpu', numel)` followed by BINPERSID.
    fn storage(key: &str, numel: u8) -> Vec<u8> {
        let mut b = vec![b'(', 0x8c, 7];
        b.extend(b"storage");
        b.extend(global("torch", "FloatStorage"));
        b.extend([0x8c, key.len() as u8]);
        b.extend(key.as_bytes());
        b.extend([0x8c, 3]);
        b.extend(b"cpu");
        b.extend([b'K', numel, b't', b'Q']);
        b
    }

    #[test]
    fn scalars() {
        assert_eq!(root(b"\x80\x02K\x07."), Obj::Int(7));
        assert_eq!(root(b"\x80\x02J\xfe\xff\xff\xff."), Obj::Int(-2));
        assert_eq!(root(b"\x80\x02M\xe9\x03."), Obj::Int(1001));
        assert_eq!(root(b"\x80\x02\x8a\x02\x00\x80."), Obj::Int(-32768));
        assert_eq!(root(b"\x80\x02\x8a\x00."), Obj::Int(0));
        assert_eq!(
            root(b"\x80\x02\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\x00."),
            Obj::BigInt(vec![0xff; 8].into_iter().chain([0]).collect())
        );
        assert_eq!(
            root(b"\x80\x02\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\xff."),
            Obj::Int(-1)
        );
        assert_eq!(root(b"\x80\x02G\x3f\xf8\x00\x00\x00\x00\x00\x00."), Obj::Float(1.5));
        assert_eq!(root(b"\x80\x02\x88."), Obj::Bool(true));
        assert_eq!(root(b"\x80\x02\x89."), Obj::Bool(false));
        assert_eq!(root(b"\x80\x02N."), Obj::None);
        assert_eq!(root(b"\x80\x02X\x02\x00\x00\x00hi."), Obj::Str("hi".into()));
        assert_eq!(root(b"\x80\x04\x8c\x02hi."), Obj::Str("hi".into()));
        assert_eq!(
            root(b"\x80\x04\x8d\x02\x00\x00\x00\x00\x00\x00\x00hi."),
            Obj::Str("hi".into())
        );
        assert_eq!(root(b"\x80\x03C\x02\x01\x02."), Obj::Bytes(vec![1, 2]));
        assert_eq!(root(b"\x80\x03B\x01\x00\x00\x00\x09."), Obj::Bytes(vec![9]));
    }

    #[test]
    fn containers_and_memo_share_objects() {
        // d = {}; memo[0] = d; d['a'] = [1, 2]; (d,): the dict read back through the memo
        // after being filled must be the filled dict.
        let u = load(b"\x80\x02}q\x00X\x01\x00\x00\x00a](K\x01K\x02esh\x00\x85.").unwrap();
        let Obj::Tuple(items) = u.get(u.root) else {
            panic!("not a tuple")
        };
        let Obj::Dict(pairs) = u.get(items[0]) else {
            panic!("not a dict")
        };
        assert_eq!(pairs.len(), 1);
        assert_eq!(u.str_at(pairs[0].0), Some("a"));
        let Obj::List(l) = u.get(pairs[0].1) else {
            panic!("not a list")
        };
        assert_eq!(
            l.iter().map(|&i| u.get(i).clone()).collect::<Vec<_>>(),
            vec![Obj::Int(1), Obj::Int(2)]
        );

        assert!(matches!(root(b"\x80\x02(K\x01K\x02K\x03t."), Obj::Tuple(v) if v.len() == 3));
        assert!(matches!(root(b"\x80\x02K\x01K\x02\x86."), Obj::Tuple(v) if v.len() == 2));
        assert!(matches!(root(b"\x80\x02(K\x01X\x01\x00\x00\x00ad."), Obj::Dict(v) if v.len() == 1));
        assert!(matches!(root(b"\x80\x04]\x94K\x01a\x94h\x01."), Obj::List(v) if v.len() == 1));
    }

    #[test]
    fn rebuilds_tensor_from_allowed_globals() {
        let mut b = b"\x80\x02".to_vec();
        b.extend(global("torch._utils", "_rebuild_tensor_v2"));
        b.push(b'(');
        b.extend(storage("0", 6));
        b.extend(b"K\x01K\x02K\x02\x86K\x01K\x02\x86\x89");
        b.extend(global("collections", "OrderedDict"));
        b.extend(b")Rt");
        b.extend(b"R.");
        let Obj::Tensor(t) = root(&b) else {
            panic!("not a tensor")
        };
        assert_eq!(t.storage.key, "0");
        assert_eq!(t.storage.dtype, StorageDtype::F32);
        assert_eq!(
            (t.offset, t.shape.as_slice(), t.stride.as_slice()),
            (1, &[2, 2][..], &[1, 2][..])
        );
    }

    #[test]
    fn stack_global_is_checked_too() {
        let ok = b"\x80\x04\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93)R.";
        assert_eq!(root(ok), Obj::Dict(vec![]));
        let bad = b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94\x93\x8c\x011\x85R.";
        let e = load(bad).unwrap_err();
        assert!(matches!(e, Error::UnsafePickle { .. }), "{e}");
        assert!(e.to_string().contains("builtins.eval"), "{e}");
    }

    #[test]
    fn refuses_every_global_off_the_allow_list() {
        for (m, n) in [
            ("os", "system"),
            ("posix", "system"),
            ("builtins", "eval"),
            ("__builtin__", "exec"),
            ("subprocess", "Popen"),
            ("torch.nn.modules.linear", "Linear"),
            ("torch", "load"),
            ("torch._utils", "_rebuild_qtensor"),
            ("collections", "defaultdict"),
        ] {
            let mut b = b"\x80\x02".to_vec();
            b.extend(global(m, n));
            b.push(b'.');
            let e = load(&b).unwrap_err();
            assert!(matches!(e, Error::UnsafePickle { .. }), "{m}.{n}: {e}");
            assert!(e.to_string().contains(&format!("{m}.{n}")), "{e}");
        }
        // INST carries its class inline; OBJ and EXT* reach classes without naming them.
        let e = load(b"\x80\x02(X\x01\x00\x00\x00lios\nsystem\n.").unwrap_err();
        assert!(
            matches!(e, Error::UnsafePickle { .. }) && e.to_string().contains("os.system"),
            "{e}"
        );
        assert!(matches!(
            load(b"\x80\x02(N)o.").unwrap_err(),
            Error::UnsafePickle { .. }
        ));
        assert!(matches!(
            load(b"\x80\x02\x82\x01.").unwrap_err(),
            Error::UnsafePickle { .. }
        ));
    }

    #[test]
    fn malformed_input_is_a_format_error() {
        let cases: &[&[u8]] = &[
            b"",
            b"\x80",
            b"\x80\x02",
            b"\x80\x02X\xff\x00\x00\x00ab.",
            b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff.",
            b"\x80\x02\x95\xff\xff\xff\xff\xff\xff\xff\x7f.",
            b"\x80\x02ctorch._utils",
            b"\x80\x02.",
            b"\x80\x02t.",
            b"\x80\x02K\x01\x87.",
            b"\x80\x02h\x05.",
            b"\x80\x02j\xff\xff\xff\xff.",
            b"\x80\x02K\x01K\x02s.",
            b"\x80\x02K\x01K\x02R.",
            b"\x80\x02N)R.",
            b"\x80\x06N.",
            b"\x80\x02\xff.",
            b"\x80\x02I1\n.",
            b"\x80\x02\x97.",
            b"\x80\x02(X\x01\x00\x00\x00aQ.",
            b"\x80\x02X\x02\x00\x00\x00\xff\xfe.",
            b"\x80\x02]K\x01b.",
        ];
        for c in cases {
            match load(c) {
                Err(Error::Format { .. }) => {}
                other => panic!("{c:?}: expected a format error, got {other:?}"),
            }
        }
    }

    #[test]
    fn memo_indices_cost_nothing_and_mark_floor_is_respected() {
        // A huge LONG_BINPUT key must not allocate a huge memo.
        assert_eq!(
            root(b"\x80\x02K\x01r\xff\xff\xff\xffj\xff\xff\xff\xff\x86."),
            Obj::Tuple(vec![0, 0])
        );
        // Popping below a MARK is an error, not a silent read of the outer stack.
        assert!(load(b"\x80\x02K\x01(0.").is_err());
    }

    #[test]
    fn reports_bytes_consumed_for_back_to_back_pickles() {
        let two = b"\x80\x02K\x01.\x80\x02K\x02.";
        let (u, used) = unpickle(two, Path::new("x")).unwrap();
        assert_eq!((u.get(u.root).clone(), used), (Obj::Int(1), 5));
        let (u, _) = unpickle(&two[used..], Path::new("x")).unwrap();
        assert_eq!(u.get(u.root).clone(), Obj::Int(2));
    }

    #[test]
    fn legacy_view_metadata_offsets_the_storage() {
        let mut b = b"\x80\x02(X\x07\x00\x00\x00storage".to_vec();
        b.extend(global("torch", "DoubleStorage"));
        b.extend(b"X\x01\x00\x00\x00kX\x03\x00\x00\x00cpuK\x08(X\x01\x00\x00\x00vK\x02K\x03tt");
        b.extend(b"Q.");
        assert_eq!(
            root(&b),
            Obj::Storage(StorageRef {
                key: "k".into(),
                dtype: StorageDtype::F64,
                base: 2,
                len: Some(3)
            })
        );
    }

    #[test]
    fn allow_listed_calls_share_instead_of_copying() {
        // torch.Size(t) and _rebuild_parameter(t) hand back the very object they were given.
        let mut b = b"\x80\x02".to_vec();
        b.extend(global("torch", "Size"));
        b.extend(b"(K\x01K\x02tq\x00\x85R");
        b.extend(b"h\x00\x86.");
        let u = load(&b).unwrap();
        let Obj::Tuple(pair) = u.get(u.root) else {
            panic!("not a tuple")
        };
        assert_eq!(pair[0], pair[1]);

        // The list-of-pairs OrderedDict form, which torch never writes, is refused.
        let mut b = b"\x80\x02".to_vec();
        b.extend(global("collections", "OrderedDict"));
        b.extend(b"]X\x01\x00\x00\x00aK\x01\x86a\x85R.");
        let e = load(&b).unwrap_err();
        assert!(
            matches!(&e, Error::Format { reason, .. } if reason.contains("OrderedDict called")),
            "{e}"
        );
    }

    #[test]
    fn tensor_descriptions_stay_small() {
        let tensor = |ndim: usize, key: &str| {
            let mut b = b"\x80\x02".to_vec();
            b.extend(global("torch._utils", "_rebuild_tensor_v2"));
            b.push(b'(');
            b.extend(storage(key, 6));
            b.extend(b"K\x00(");
            b.extend(std::iter::repeat_n(*b"K\x01", ndim).flatten());
            b.extend(b"tq\x00h\x00N)tR.");
            load(&b)
        };
        assert!(matches!(tensor(4, "0").unwrap().objs.last(), Some(Obj::Tensor(t)) if t.shape == [1; 4]));
        assert!(matches!(tensor(65, "0").unwrap_err(), Error::Format { .. }));
        assert!(tensor(1, &"k".repeat(255)).is_ok());
        let mut b = b"\x80\x02(X\x07\x00\x00\x00storage".to_vec();
        b.extend(global("torch", "FloatStorage"));
        b.extend(b"X\x00\x04\x00\x00");
        b.extend(std::iter::repeat_n(b'k', 1024));
        b.extend(b"X\x03\x00\x00\x00cpuK\x01tQ.");
        assert!(matches!(load(&b).unwrap_err(), Error::Format { .. }));
    }
}
