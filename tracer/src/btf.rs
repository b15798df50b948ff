//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`), for one job: finding where a
//! struct member sits, so that the `tp_btf` program can read `struct tcp_sock` and
//! `struct task_struct` fields at the offsets of the running kernel (aya cannot emit CO-RE field
//! relocations from Rust, and aya-obj keeps its BTF accessors private).
//!
//! Consumes the raw BTF blob (header, type section, string section; format in the kernel's
//! Documentation/bpf/btf.rst) and produces [`Member`]s: bit offset from the start of the outer
//! struct, bitfield width, and the member type's size. Member paths may cross nested anonymous
//! structs/unions (their offsets accumulate) and named struct members (`a.b.c`).
//!
//! Untrusted-input rules: every offset and length is checked before use, type ids are bounds
//! checked, and type chains are followed to a fixed depth, so a malformed blob yields an error,
//! never a panic or a loop.

use std::ops::Range;
use std::path::Path;

/// Where the running kernel publishes its own BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// Longest typedef/qualifier/array chain or anonymous-member nesting followed.
const MAX_DEPTH: usize = 32;

/// BTF kinds (include/uapi/linux/btf.h).
mod kind {
    pub const INT: u8 = 1;
    pub const PTR: u8 = 2;
    pub const ARRAY: u8 = 3;
    pub const STRUCT: u8 = 4;
    pub const UNION: u8 = 5;
    pub const ENUM: u8 = 6;
    pub const FWD: u8 = 7;
    pub const TYPEDEF: u8 = 8;
    pub const VOLATILE: u8 = 9;
    pub const CONST: u8 = 10;
    pub const RESTRICT: u8 = 11;
    pub const FUNC: u8 = 12;
    pub const FUNC_PROTO: u8 = 13;
    pub const VAR: u8 = 14;
    pub const DATASEC: u8 = 15;
    pub const FLOAT: u8 = 16;
    pub const DECL_TAG: u8 = 17;
    pub const TYPE_TAG: u8 = 18;
    pub const ENUM64: u8 = 19;
}

/// Why BTF could not be read or a member not found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    /// The file could not be read.
    #[error("reading {path}: {kind}")]
    Read {
        path: String,
        kind: std::io::ErrorKind,
    },
    /// The blob does not start with the BTF magic (or is of the other byte order).
    #[error("not BTF (magic {magic:#06x})")]
    Magic { magic: u16 },
    /// A BTF version this reader does not know.
    #[error("unsupported BTF version {version}")]
    Version { version: u8 },
    /// A section or record runs past the end of the blob.
    #[error("truncated BTF: {what}")]
    Truncated { what: &'static str },
    /// A type record of a kind this reader does not know (so its length is unknown).
    #[error("unknown BTF kind {kind} at type id {id}")]
    Kind { kind: u8, id: u32 },
    /// A name offset outside the string section, or a name that is not UTF-8.
    #[error("bad string offset {offset}")]
    Str { offset: u32 },
    /// No struct or union of that name.
    #[error("no struct or union named {name}")]
    NoType { name: String },
    /// The struct has no such member (directly or inside anonymous members).
    #[error("{ty} has no member {member}")]
    NoMember { ty: String, member: String },
    /// A path component names a member that is not a struct or union.
    #[error("{ty}.{member} is not a struct or union")]
    NotComposite { ty: String, member: String },
    /// A type id outside the blob, or a chain deeper than the reader follows.
    #[error("bad type reference {id}")]
    BadType { id: u32 },
}

/// One type record: its header words and where its kind-specific trailing data starts
/// (an offset into the blob). 16 bytes, so the ~130k records of a vmlinux stay small.
#[derive(Clone, Copy, Debug)]
struct TypeRec {
    name_off: u32,
    info: u32,
    /// `size` for INT/STRUCT/UNION/ENUM/ENUM64/FLOAT/DATASEC, `type` for the others.
    size_or_type: u32,
    extra: u32,
}

impl TypeRec {
    fn kind(&self) -> u8 {
        ((self.info >> 24) & 0x1f) as u8
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
    fn vlen(&self) -> u16 {
        (self.info & 0xffff) as u16
    }
    fn extra(&self) -> usize {
        self.extra as usize
    }
}

/// A struct member located by [`Btf::member`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Bit offset from the start of the outermost struct of the lookup.
    pub bit_offset: u32,
    /// Width in bits when the member is a bitfield, else 0.
    pub bitfield_size: u32,
    /// Size in bytes of the member's type (after typedefs and qualifiers), if it has one.
    pub size: Option<u32>,
    /// BTF type id of the member's type (as declared, before resolving typedefs).
    pub type_id: u32,
}

impl Member {
    /// The byte offset of a whole-byte, non-bitfield member.
    pub fn byte_offset(&self) -> Option<u32> {
        (self.bitfield_size == 0 && self.bit_offset.is_multiple_of(8))
            .then_some(self.bit_offset / 8)
    }
}

/// Parsed BTF: the blob itself and an index of its type records.
pub struct Btf {
    blob: Vec<u8>,
    strings: Range<usize>,
    /// Index 0 is `void`; type id N is `types[N]`.
    types: Vec<TypeRec>,
}

impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf")
            .field("types", &self.types.len())
            .field("strings", &self.strings.len())
            .finish()
    }
}

fn u32_at(b: &[u8], off: usize, what: &'static str) -> Result<u32, BtfError> {
    let bytes = b
        .get(off..off.saturating_add(4))
        .ok_or(BtfError::Truncated { what })?
        .try_into()
        .map_err(|_| BtfError::Truncated { what })?;
    Ok(u32::from_ne_bytes(bytes))
}

/// Bytes of trailing data after a type record of `kind` with `vlen` entries.
fn extra_len(kind: u8, vlen: u16) -> Option<usize> {
    let n = usize::from(vlen);
    Some(match kind {
        kind::INT | kind::VAR | kind::DECL_TAG => 4,
        kind::ARRAY => 12,
        kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => 12 * n,
        kind::ENUM | kind::FUNC_PROTO => 8 * n,
        kind::PTR
        | kind::FWD
        | kind::TYPEDEF
        | kind::VOLATILE
        | kind::CONST
        | kind::RESTRICT
        | kind::FUNC
        | kind::FLOAT
        | kind::TYPE_TAG => 0,
        _ => return None,
    })
}

impl Btf {
    /// Reads and parses the running kernel's BTF.
    pub fn from_sys() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    /// Reads and parses a BTF file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path).map_err(|e| BtfError::Read {
            path: path.display().to_string(),
            kind: e.kind(),
        })?;
        Self::parse_owned(bytes)
    }

    /// Parses a raw BTF blob (native byte order, as the kernel publishes it).
    pub fn parse(blob: &[u8]) -> Result<Self, BtfError> {
        Self::parse_owned(blob.to_vec())
    }

    /// Parses a raw BTF blob, keeping it (no copy of its sections).
    pub fn parse_owned(blob: Vec<u8>) -> Result<Self, BtfError> {
        let magic_bytes: [u8; 2] = blob
            .get(0..2)
            .and_then(|b| b.try_into().ok())
            .ok_or(BtfError::Truncated { what: "header" })?;
        let magic = u16::from_ne_bytes(magic_bytes);
        if magic != MAGIC {
            return Err(BtfError::Magic { magic });
        }
        let version = *blob.get(2).ok_or(BtfError::Truncated { what: "header" })?;
        if version != 1 {
            return Err(BtfError::Version { version });
        }
        // Offsets are kept as u32 in the index.
        if u32::try_from(blob.len()).is_err() {
            return Err(BtfError::Truncated { what: "size" });
        }
        let hdr_len = u32_at(&blob, 4, "header")? as usize;
        if hdr_len < HEADER_LEN || blob.len() < hdr_len {
            return Err(BtfError::Truncated { what: "header" });
        }
        let type_off = u32_at(&blob, 8, "header")? as usize;
        let type_len = u32_at(&blob, 12, "header")? as usize;
        let str_off = u32_at(&blob, 16, "header")? as usize;
        let str_len = u32_at(&blob, 20, "header")? as usize;
        let section = |off: usize, len: usize, what: &'static str| {
            let start = hdr_len
                .checked_add(off)
                .ok_or(BtfError::Truncated { what })?;
            let end = start.checked_add(len).ok_or(BtfError::Truncated { what })?;
            if end > blob.len() {
                return Err(BtfError::Truncated { what });
            }
            Ok(start..end)
        };
        let type_sec = section(type_off, type_len, "type section")?;
        let strings = section(str_off, str_len, "string section")?;

        let mut types = Vec::with_capacity(type_len / 16);
        types.push(TypeRec {
            name_off: 0,
            info: 0,
            size_or_type: 0,
            extra: 0,
        });
        let mut pos = type_sec.start;
        while pos < type_sec.end {
            let id = u32::try_from(types.len()).map_err(|_| BtfError::BadType { id: u32::MAX })?;
            let rec = |at: usize| -> Result<u32, BtfError> {
                if at + 4 > type_sec.end {
                    return Err(BtfError::Truncated {
                        what: "type record",
                    });
                }
                u32_at(&blob, at, "type record")
            };
            let name_off = rec(pos)?;
            let info = rec(pos + 4)?;
            let size_or_type = rec(pos + 8)?;
            let t = TypeRec {
                name_off,
                info,
                size_or_type,
                // Fits: the blob's length was checked against u32 above.
                extra: (pos + 12) as u32,
            };
            let len = extra_len(t.kind(), t.vlen()).ok_or(BtfError::Kind { kind: t.kind(), id })?;
            let end = pos + 12 + len;
            if end > type_sec.end {
                return Err(BtfError::Truncated {
                    what: "type record",
                });
            }
            types.push(t);
            pos = end;
        }
        Ok(Self {
            blob,
            strings,
            types,
        })
    }

    /// Number of types, `void` included.
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// Whether the blob holds no types besides `void`.
    pub fn is_empty(&self) -> bool {
        self.types.len() <= 1
    }

    fn name(&self, off: u32) -> Result<&str, BtfError> {
        let tail = self.blob[self.strings.clone()]
            .get(off as usize..)
            .ok_or(BtfError::Str { offset: off })?;
        let end = tail
            .iter()
            .position(|&c| c == 0)
            .ok_or(BtfError::Str { offset: off })?;
        std::str::from_utf8(&tail[..end]).map_err(|_| BtfError::Str { offset: off })
    }

    fn rec(&self, id: u32) -> Result<&TypeRec, BtfError> {
        self.types.get(id as usize).ok_or(BtfError::BadType { id })
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn resolve(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            let t = self.rec(id)?;
            match t.kind() {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Ok(id),
            }
        }
        Err(BtfError::BadType { id })
    }

    /// Size in bytes of a type, if it has one.
    fn size_of(&self, id: u32) -> Result<Option<u32>, BtfError> {
        let mut id = self.resolve(id)?;
        let mut mult: u32 = 1;
        for _ in 0..MAX_DEPTH {
            let t = self.rec(id)?;
            let size = match t.kind() {
                kind::INT
                | kind::STRUCT
                | kind::UNION
                | kind::ENUM
                | kind::ENUM64
                | kind::FLOAT => t.size_or_type,
                kind::PTR => 8,
                kind::ARRAY => {
                    let elem = u32_at(&self.blob, t.extra(), "array")?;
                    let nelems = u32_at(&self.blob, t.extra() + 8, "array")?;
                    mult = mult.checked_mul(nelems).ok_or(BtfError::BadType { id })?;
                    id = self.resolve(elem)?;
                    continue;
                }
                _ => return Ok(None),
            };
            return Ok(size.checked_mul(mult));
        }
        Err(BtfError::BadType { id })
    }

    /// Id of the first struct or union named `name` that has members (not a forward
    /// declaration).
    pub fn find_composite(&self, name: &str) -> Result<u32, BtfError> {
        for (id, t) in self.types.iter().enumerate().skip(1) {
            if matches!(t.kind(), kind::STRUCT | kind::UNION)
                && t.vlen() > 0
                && self.name(t.name_off).is_ok_and(|n| n == name)
            {
                return u32::try_from(id).map_err(|_| BtfError::BadType { id: u32::MAX });
            }
        }
        Err(BtfError::NoType { name: name.into() })
    }

    /// Whether some enum of the BTF has an enumerator named `name` (e.g.
    /// `BPF_FUNC_get_current_task_btf` in `enum bpf_func_id`: the kernel knows that helper).
    pub fn has_enumerator(&self, name: &str) -> bool {
        self.types.iter().skip(1).any(|t| {
            let width = match t.kind() {
                kind::ENUM => 8,
                kind::ENUM64 => 12,
                _ => return false,
            };
            (0..usize::from(t.vlen())).any(|i| {
                u32_at(&self.blob, t.extra() + width * i, "enum")
                    .and_then(|off| self.name(off))
                    .is_ok_and(|n| n == name)
            })
        })
    }

    /// The enumerators of the enum named `name` (ENUM or ENUM64 with entries), as `(name,
    /// value)` pairs in declaration order.
    pub fn enumerators(&self, name: &str) -> Result<Vec<(&str, i64)>, BtfError> {
        let t = self
            .types
            .iter()
            .skip(1)
            .find(|t| {
                matches!(t.kind(), kind::ENUM | kind::ENUM64)
                    && t.vlen() > 0
                    && self.name(t.name_off).is_ok_and(|n| n == name)
            })
            .ok_or_else(|| BtfError::NoType { name: name.into() })?;
        let wide = t.kind() == kind::ENUM64;
        let width = if wide { 12 } else { 8 };
        (0..usize::from(t.vlen()))
            .map(|i| {
                let at = t.extra() + width * i;
                let n = self.name(u32_at(&self.blob, at, "enum")?)?;
                let lo = u32_at(&self.blob, at + 4, "enum")?;
                let v = if wide {
                    let hi = u32_at(&self.blob, at + 8, "enum")?;
                    ((u64::from(hi) << 32) | u64::from(lo)) as i64
                } else if t.kind_flag() {
                    i64::from(lo as i32)
                } else {
                    i64::from(lo)
                };
                Ok((n, v))
            })
            .collect()
    }

    /// Locates `path` (`member` or `member.member…`) in the struct or union `ty`. Members of
    /// anonymous structs and unions are found as if they were direct members; offsets are from
    /// the start of `ty`.
    pub fn member(&self, ty: &str, path: &str) -> Result<Member, BtfError> {
        let mut id = self.find_composite(ty)?;
        let mut base = 0u32;
        let mut found = None;
        let mut parent = ty.to_owned();
        for (i, part) in path.split('.').enumerate() {
            if i > 0 {
                let m: Member = found.ok_or(BtfError::BadType { id })?;
                let inner = self.resolve(m.type_id)?;
                if !matches!(self.rec(inner)?.kind(), kind::STRUCT | kind::UNION) {
                    return Err(BtfError::NotComposite {
                        ty: ty.into(),
                        member: parent,
                    });
                }
                id = inner;
                base = m.bit_offset;
            }
            let m = self
                .find_member(id, part, base, 0)?
                .ok_or_else(|| BtfError::NoMember {
                    ty: ty.into(),
                    member: path.split('.').take(i + 1).collect::<Vec<_>>().join("."),
                })?;
            found = Some(m);
            parent = path.split('.').take(i + 1).collect::<Vec<_>>().join(".");
        }
        found.ok_or(BtfError::NoMember {
            ty: ty.into(),
            member: path.into(),
        })
    }

    /// Searches the members of composite `id` (whose start is at bit `base`) for `name`,
    /// descending into anonymous struct/union members.
    fn find_member(
        &self,
        id: u32,
        name: &str,
        base: u32,
        depth: usize,
    ) -> Result<Option<Member>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::BadType { id });
        }
        let t = *self.rec(id)?;
        if !matches!(t.kind(), kind::STRUCT | kind::UNION) {
            return Ok(None);
        }
        for i in 0..usize::from(t.vlen()) {
            let at = t.extra() + 12 * i;
            let m_name = u32_at(&self.blob, at, "member")?;
            let m_type = u32_at(&self.blob, at + 4, "member")?;
            let m_off = u32_at(&self.blob, at + 8, "member")?;
            let (mut bit_off, mut bits) = if t.kind_flag() {
                (m_off & 0x00ff_ffff, m_off >> 24)
            } else {
                (m_off, 0)
            };
            let this = self.name(m_name)?;
            if this == name {
                let resolved = self.resolve(m_type)?;
                let r = self.rec(resolved)?;
                if !t.kind_flag() && r.kind() == kind::INT {
                    // Old-style bitfield: the INT type itself carries width and bit offset.
                    let enc = u32_at(&self.blob, r.extra(), "int")?;
                    let nr_bits = enc & 0xff;
                    let int_off = (enc >> 16) & 0xff;
                    if nr_bits != r.size_or_type.saturating_mul(8) || int_off != 0 {
                        bits = nr_bits;
                        bit_off = bit_off.saturating_add(int_off);
                    }
                }
                return Ok(Some(Member {
                    bit_offset: base.checked_add(bit_off).ok_or(BtfError::BadType { id })?,
                    bitfield_size: bits,
                    size: self.size_of(m_type)?,
                    type_id: m_type,
                }));
            }
            if this.is_empty() {
                let inner = self.resolve(m_type)?;
                if matches!(self.rec(inner)?.kind(), kind::STRUCT | kind::UNION) {
                    let inner_base = base.checked_add(bit_off).ok_or(BtfError::BadType { id })?;
                    if let Some(m) = self.find_member(inner, name, inner_base, depth + 1)? {
                        return Ok(Some(m));
                    }
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF blobs for tests: types are appended in id order (first is id 1).
    #[derive(Default)]
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn push(&mut self, name: &str, kind: u8, kflag: bool, vlen: u16, st: u32) -> u32 {
            let n = self.s(name);
            let info = (u32::from(kind) << 24) | (u32::from(kflag) << 31) | u32::from(vlen);
            for w in [n, info, st] {
                self.types.extend_from_slice(&w.to_ne_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }
        fn words(&mut self, ws: &[u32]) {
            for w in ws {
                self.types.extend_from_slice(&w.to_ne_bytes());
            }
        }
        fn int(&mut self, name: &str, size: u32, bits: u32, off: u32) -> u32 {
            let id = self.push(name, kind::INT, false, 0, size);
            self.words(&[(off << 16) | bits]);
            id
        }
        /// members: (name, type, bit offset, bitfield size)
        fn composite(
            &mut self,
            k: u8,
            name: &str,
            size: u32,
            kflag: bool,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let names: Vec<u32> = members.iter().map(|m| self.s(m.0)).collect();
            let id = self.push(name, k, kflag, members.len() as u16, size);
            for (m, n) in members.iter().zip(names) {
                let off = if kflag { (m.3 << 24) | m.2 } else { m.2 };
                self.words(&[n, m.1, off]);
            }
            id
        }
        fn blob(&self) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend_from_slice(&MAGIC.to_ne_bytes());
            b.push(1); // version
            b.push(0); // flags
            for w in [
                HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                b.extend_from_slice(&w.to_ne_bytes());
            }
            b.extend_from_slice(&self.types);
            b.extend_from_slice(&self.strings);
            b
        }
    }

    /// A miniature `struct sock_common` / `struct sock`, with every kind of the format
    /// sprinkled in so that the record walker must skip each one's trailing data.
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let u32_t = b.int("unsigned int", 4, 32, 0); // 1
        let u16_t = b.int("short unsigned int", 2, 16, 0); // 2
        let be32 = b.push("__be32", kind::TYPEDEF, false, 0, u32_t); // 3
        let be16 = b.push("__be16", kind::TYPEDEF, false, 0, u16_t); // 4
        let u8_t = b.int("unsigned char", 1, 8, 0); // 5
        let arr = b.push("", kind::ARRAY, false, 0, 0); // 6
        b.words(&[u8_t, u32_t, 16]);
        let in6 = b.composite(
            kind::STRUCT,
            "in6_addr",
            16,
            false,
            &[("s6_addr", arr, 0, 0)],
        ); // 7
        // Records of other kinds, unused, to exercise the skipping.
        let e = b.push("e", kind::ENUM, false, 2, 4);
        b.words(&[b.strings.len() as u32, 1, 0, 2]);
        b.push("e64", kind::ENUM64, false, 1, 8);
        b.words(&[0, 1, 2]);
        let fp = b.push("", kind::FUNC_PROTO, false, 2, u32_t);
        b.words(&[0, u32_t, 0, e]);
        b.push("f", kind::FUNC, false, 0, fp);
        let v = b.push("v", kind::VAR, false, 0, u32_t);
        b.words(&[1]);
        b.push(".data", kind::DATASEC, false, 1, 4);
        b.words(&[v, 0, 4]);
        b.push("tag", kind::DECL_TAG, false, 0, v);
        b.words(&[u32::MAX]);
        b.push("fwd", kind::FWD, false, 0, 0);
        b.push("double", kind::FLOAT, false, 0, 8);
        let cu16 = b.push("", kind::CONST, false, 0, u16_t);
        let vu16 = b.push("", kind::VOLATILE, false, 0, cu16);
        let ptr = b.push("", kind::PTR, false, 0, 0);
        b.push("rcu", kind::TYPE_TAG, false, 0, ptr);
        b.push("", kind::RESTRICT, false, 0, ptr);
        // struct { __be32 skc_daddr; __be32 skc_rcv_saddr; }
        let pair = b.composite(
            kind::STRUCT,
            "",
            8,
            false,
            &[("skc_daddr", be32, 0, 0), ("skc_rcv_saddr", be32, 32, 0)],
        );
        // union { u64 skc_addrpair; struct { ... }; }
        let u64_t = b.int("long long unsigned int", 8, 64, 0);
        let addr_union = b.composite(
            kind::UNION,
            "",
            8,
            false,
            &[("skc_addrpair", u64_t, 0, 0), ("", pair, 0, 0)],
        );
        let ports = b.composite(
            kind::STRUCT,
            "",
            4,
            false,
            &[("skc_dport", be16, 0, 0), ("skc_num", vu16, 16, 0)],
        );
        let port_union = b.composite(
            kind::UNION,
            "",
            4,
            false,
            &[("skc_portpair", u32_t, 0, 0), ("", ports, 0, 0)],
        );
        let common = b.composite(
            kind::STRUCT,
            "sock_common",
            64,
            false,
            &[
                ("", addr_union, 0, 0),
                ("", port_union, 64, 0),
                ("skc_family", u16_t, 96, 0),
                ("skc_v6_daddr", in6, 128, 0),
                ("skc_v6_rcv_saddr", in6, 256, 0),
            ],
        );
        // struct sock with a kind_flag bitfield run after the common part.
        b.composite(
            kind::STRUCT,
            "sock",
            80,
            true,
            &[
                ("__sk_common", common, 0, 0),
                ("sk_padding", u32_t, 512, 1),
                ("sk_kern_sock", u32_t, 513, 1),
                ("sk_protocol", u32_t, 520, 8),
                ("sk_type", u16_t, 528, 0),
            ],
        );
        // Old-style bitfield: the INT carries width and offset.
        let bf = b.int("unsigned int", 4, 3, 5);
        b.composite(kind::STRUCT, "old", 4, false, &[("flags", bf, 8, 0)]);
        b.blob()
    }

    #[test]
    fn reads_enumerators_by_enum_name() {
        let mut b = Builder::new();
        let e = b.push("sk_rst_reason", kind::ENUM, false, 2, 4);
        let (x, y) = (
            b.s("SK_RST_REASON_NO_SOCKET"),
            b.s("SK_RST_REASON_TCP_STATE"),
        );
        b.words(&[x, 1, y, 14]);
        let _ = e;
        b.push("wide", kind::ENUM64, true, 1, 8);
        let z = b.s("MINUS");
        b.words(&[z, u32::MAX, u32::MAX]);
        let btf = Btf::parse(&b.blob()).unwrap();
        assert_eq!(
            btf.enumerators("sk_rst_reason").unwrap(),
            vec![
                ("SK_RST_REASON_NO_SOCKET", 1),
                ("SK_RST_REASON_TCP_STATE", 14)
            ]
        );
        assert_eq!(btf.enumerators("wide").unwrap(), vec![("MINUS", -1)]);
        assert!(btf.enumerators("nope").is_err());
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_structs() {
        let btf = Btf::parse(&sample()).unwrap();
        let off = |ty: &str, p: &str| btf.member(ty, p).unwrap().byte_offset();
        assert_eq!(off("sock_common", "skc_daddr"), Some(0));
        assert_eq!(off("sock_common", "skc_rcv_saddr"), Some(4));
        assert_eq!(off("sock_common", "skc_dport"), Some(8));
        assert_eq!(off("sock_common", "skc_num"), Some(10));
        assert_eq!(off("sock_common", "skc_family"), Some(12));
        assert_eq!(off("sock", "__sk_common.skc_num"), Some(10));
        assert_eq!(off("sock", "__sk_common.skc_v6_rcv_saddr"), Some(32));
        assert_eq!(off("sock", "sk_type"), Some(66));
    }

    #[test]
    fn sizes_follow_typedefs_qualifiers_and_arrays() {
        let btf = Btf::parse(&sample()).unwrap();
        let size = |p: &str| btf.member("sock", p).unwrap().size;
        assert_eq!(size("__sk_common.skc_daddr"), Some(4));
        assert_eq!(size("__sk_common.skc_dport"), Some(2));
        assert_eq!(size("__sk_common.skc_num"), Some(2));
        assert_eq!(size("__sk_common.skc_v6_daddr"), Some(16));
        assert_eq!(size("__sk_common.skc_v6_daddr.s6_addr"), Some(16));
        assert_eq!(size("__sk_common"), Some(64));
    }

    #[test]
    fn reports_bitfields() {
        let btf = Btf::parse(&sample()).unwrap();
        let m = btf.member("sock", "sk_kern_sock").unwrap();
        assert_eq!((m.bit_offset, m.bitfield_size), (513, 1));
        assert_eq!(m.byte_offset(), None);
        let p = btf.member("sock", "sk_protocol").unwrap();
        assert_eq!((p.bit_offset, p.bitfield_size), (520, 8));
        assert_eq!(
            p.byte_offset(),
            None,
            "a byte-aligned bitfield is still a bitfield"
        );
        let old = btf.member("old", "flags").unwrap();
        assert_eq!((old.bit_offset, old.bitfield_size), (13, 3));
    }

    #[test]
    fn missing_things_are_errors() {
        let btf = Btf::parse(&sample()).unwrap();
        assert!(matches!(
            btf.member("nosuch", "x"),
            Err(BtfError::NoType { .. })
        ));
        assert_eq!(
            btf.member("sock", "__sk_common.skc_nope"),
            Err(BtfError::NoMember {
                ty: "sock".into(),
                member: "__sk_common.skc_nope".into()
            })
        );
        assert!(matches!(
            btf.member("sock", "sk_type.x"),
            Err(BtfError::NotComposite { .. })
        ));
        // Forward declarations are not structs with members.
        assert!(btf.find_composite("fwd").is_err());
    }

    #[test]
    fn malformed_blobs_are_errors_not_panics() {
        let good = sample();
        assert!(Btf::parse(&good).is_ok());
        for cut in [0, 1, 3, 10, 23, 24, 30, good.len() - 1] {
            assert!(Btf::parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 0xff;
        assert!(matches!(
            Btf::parse(&bad_magic),
            Err(BtfError::Magic { .. })
        ));
        // An unknown kind in the first record.
        let mut bad_kind = good.clone();
        bad_kind[HEADER_LEN + 7] = 0x1f;
        assert!(matches!(
            Btf::parse(&bad_kind),
            Err(BtfError::Kind { kind: 0x1f, id: 1 })
        ));
        // A typedef pointing at itself.
        let mut b = Builder::new();
        let t = b.push("loop", kind::TYPEDEF, false, 0, 1);
        b.composite(kind::STRUCT, "s", 4, false, &[("x", t, 0, 0)]);
        let btf = Btf::parse(&b.blob()).unwrap();
        assert!(btf.member("s", "x").is_err());
        // A type id past the end.
        let mut b = Builder::new();
        b.composite(kind::STRUCT, "s", 4, false, &[("x", 99, 0, 0)]);
        let btf = Btf::parse(&b.blob()).unwrap();
        assert_eq!(btf.member("s", "x"), Err(BtfError::BadType { id: 99 }));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let good = sample();
        // Flip each byte of the header and of the first records in turn.
        for i in 0..good.len().min(400) {
            let mut b = good.clone();
            b[i] = b[i].wrapping_add(0x5a);
            if let Ok(btf) = Btf::parse(&b) {
                let _ = btf.member("sock", "__sk_common.skc_v6_daddr");
                let _ = btf.member("sock", "sk_protocol");
            }
        }
    }
}
