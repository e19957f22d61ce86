//! `Deserialize` for the internally tagged wire enums without serde's buffering.
//!
//! serde's derived `#[serde(tag = "...")]` (and `#[serde(flatten)]`) first reads
//! the whole object into its private `Content` tree and then walks it again: an
//! allocation for every key and string, and a second pass. Here the object is
//! read once. When the tag comes first (as serde writes it) the variant's plain
//! derived struct reads the rest of the map straight from the input. Keys before
//! the tag are kept in a small [`Buf`], and the struct reads them and then the
//! rest of the map ([`Rest`]).
//!
//! What is accepted is what the derived code accepts (`compat_tests` checks it
//! against the derived definitions): the tag anywhere in the object, a second
//! tag refused (`duplicate field`), a missing tag refused, unknown fields
//! ignored, and the sequence form `[tag, field, ...]`. One difference: the
//! values of ignored fields are now skipped the way serde skips them for any
//! plain struct (`IgnoredAny`), so serde_json only checks their syntax (no
//! nesting limit, no float range) where `Content` parsed them fully.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{
    BorrowedBytesDeserializer, BorrowedStrDeserializer, BytesDeserializer, MapAccessDeserializer,
    MapDeserializer, SeqAccessDeserializer, SeqDeserializer, StrDeserializer, StringDeserializer,
};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IgnoredAny, IntoDeserializer, MapAccess,
    SeqAccess, Visitor,
};

/// An enum tagged by a field of its object, each variant a struct.
pub(crate) trait Tagged: Sized {
    /// The tag's field name.
    const TAG: &'static str;
    /// For "invalid type" errors, as serde says it.
    const EXPECTING: &'static str;
    /// Whether each variant's struct refuses a second tag itself ([`SecondTag`]).
    const CHECKS_SECOND_TAG: bool;
    /// The variant identifier (a `#[serde(variant_identifier)]` enum).
    type Tag: DeserializeOwned;
    /// Reads the variant `tag` from `rest`, the object without its tag.
    fn from_rest<'de, D: Deserializer<'de>>(tag: Self::Tag, rest: D) -> Result<Self, D::Error>;
}

/// `Deserialize::deserialize` of a [`Tagged`] enum.
pub(crate) fn deserialize_tagged<'de, T: Tagged, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    deserializer.deserialize_any(TaggedVisitor::<T>(PhantomData))
}

struct TaggedVisitor<T>(PhantomData<T>);

impl<'de, T: Tagged> Visitor<'de> for TaggedVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut prefix = Vec::new();
        while let Some(key) = map.next_key_seed(BufSeed)? {
            if key.is_str(T::TAG) {
                let tag = map.next_value::<T::Tag>()?;
                if !T::CHECKS_SECOND_TAG {
                    return T::from_rest(tag, Rest::new(prefix, map, Some(T::TAG), &mut []));
                }
                if prefix.is_empty() {
                    // The usual case: the derived struct reads straight from the input.
                    return T::from_rest(tag, MapAccessDeserializer::new(map));
                }
                return T::from_rest(tag, Rest::new(prefix, map, None, &mut []));
            }
            let value = map.next_value_seed(BufSeed)?;
            prefix.push((key, value));
        }
        Err(de::Error::missing_field(T::TAG))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        let Some(tag) = seq.next_element::<T::Tag>()? else {
            return Err(de::Error::missing_field(T::TAG));
        };
        let value = T::from_rest(tag, SeqAccessDeserializer::new(&mut seq))?;
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format_args!(
                "trailing elements in {}",
                T::EXPECTING
            )));
        }
        Ok(value)
    }
}

/// The fields of an object after its tag: first the buffered ones that came
/// before it, then the rest of the map as it is read. With `tag`, another tag
/// key is an error (types made by [`internally_tagged!`] check that with a
/// [`SecondTag`] field instead); the keys named in `extra` (fields of the
/// struct around a flattened enum, see `Entry`) are taken out into their slots.
pub(crate) struct Rest<'a, 'de, A> {
    prefix: std::vec::IntoIter<(Buf<'de>, Buf<'de>)>,
    value: Option<Buf<'de>>,
    map: A,
    tag: Option<&'static str>,
    extra: &'a mut [(&'static str, Option<u64>)],
}

impl<'a, 'de, A: MapAccess<'de>> Rest<'a, 'de, A> {
    pub(crate) fn new(
        prefix: Vec<(Buf<'de>, Buf<'de>)>,
        map: A,
        tag: Option<&'static str>,
        extra: &'a mut [(&'static str, Option<u64>)],
    ) -> Self {
        Rest {
            prefix: prefix.into_iter(),
            value: None,
            map,
            tag,
            extra,
        }
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Rest<'_, 'de, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        if let Some((key, value)) = self.prefix.next() {
            self.value = Some(value);
            return seed.deserialize(key.into_deserializer()).map(Some);
        }
        if self.tag.is_none() && self.extra.is_empty() {
            return self.map.next_key_seed(seed);
        }
        let mut seed = seed;
        loop {
            let guard = KeyGuard {
                seed,
                tag: self.tag,
                extra: self.extra,
            };
            match self.map.next_key_seed(guard)? {
                None => return Ok(None),
                Some(Guarded::Key(key)) => return Ok(Some(key)),
                Some(Guarded::Extra(i, s)) => {
                    let Some((name, slot)) = self.extra.get_mut(i) else {
                        return Err(de::Error::custom("internal: bad field slot"));
                    };
                    if slot.is_some() {
                        return Err(de::Error::duplicate_field(name));
                    }
                    *slot = Some(self.map.next_value()?);
                    seed = s;
                }
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        match self.value.take() {
            Some(value) => seed.deserialize(value.into_deserializer()),
            None => self.map.next_value_seed(seed),
        }
    }
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for Rest<'_, 'de, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// A key read from the map: handed on to the variant's own key seed, or one
/// of the `extra` fields (with the seed given back for the next key).
enum Guarded<K, V> {
    Key(V),
    Extra(usize, K),
}

/// Reads a key and checks it against the tag and the `extra` names before
/// handing it to `seed`, without copying it.
struct KeyGuard<'a, K> {
    seed: K,
    tag: Option<&'static str>,
    extra: &'a [(&'static str, Option<u64>)],
}

impl<K> KeyGuard<'_, K> {
    fn check<E: de::Error>(&self, key: &[u8]) -> Result<Option<usize>, E> {
        if let Some(tag) = self.tag
            && key == tag.as_bytes()
        {
            return Err(E::duplicate_field(tag));
        }
        Ok(self.extra.iter().position(|(n, _)| n.as_bytes() == key))
    }
}

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for KeyGuard<'_, K> {
    type Value = Guarded<K, K::Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_identifier(self)
    }
}

impl<'de, K: DeserializeSeed<'de>> Visitor<'de> for KeyGuard<'_, K> {
    type Value = Guarded<K, K::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        match self.check(v.as_bytes())? {
            Some(i) => Ok(Guarded::Extra(i, self.seed)),
            None => self
                .seed
                .deserialize(BorrowedStrDeserializer::new(v))
                .map(Guarded::Key),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        match self.check(v.as_bytes())? {
            Some(i) => Ok(Guarded::Extra(i, self.seed)),
            None => self
                .seed
                .deserialize(StrDeserializer::new(v))
                .map(Guarded::Key),
        }
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        match self.check(v.as_bytes())? {
            Some(i) => Ok(Guarded::Extra(i, self.seed)),
            None => self
                .seed
                .deserialize(StringDeserializer::new(v))
                .map(Guarded::Key),
        }
    }

    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        match self.check(v)? {
            Some(i) => Ok(Guarded::Extra(i, self.seed)),
            None => self
                .seed
                .deserialize(BorrowedBytesDeserializer::new(v))
                .map(Guarded::Key),
        }
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        match self.check(v)? {
            Some(i) => Ok(Guarded::Extra(i, self.seed)),
            None => self
                .seed
                .deserialize(BytesDeserializer::new(v))
                .map(Guarded::Key),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.seed
            .deserialize(v.into_deserializer())
            .map(Guarded::Key)
    }
}

/// A field named like the tag of `T` in each variant's struct: the tag itself
/// is taken before the struct reads the object, so this field only sees a
/// second tag, which is an error (`duplicate field`, as serde's derive says).
pub(crate) struct SecondTag<T>(PhantomData<T>);

impl<T> Default for SecondTag<T> {
    fn default() -> Self {
        SecondTag(PhantomData)
    }
}

impl<'de, T: Tagged> de::Deserialize<'de> for SecondTag<T> {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(de::Error::duplicate_field(T::TAG))
    }
}

/// A value read before the tag was found (self-describing input such as JSON).
pub(crate) enum Buf<'de> {
    Unit,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(&'de str),
    String(String),
    Bytes(Vec<u8>),
    Seq(Vec<Buf<'de>>),
    Map(Vec<(Buf<'de>, Buf<'de>)>),
}

impl Buf<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Buf::Str(s) => Some(s),
            Buf::String(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn is_str(&self, s: &str) -> bool {
        self.as_str() == Some(s)
    }
}

/// Written back as the JSON it was read from (for a `RawValue` read from a
/// buffered value).
impl serde::Serialize for Buf<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Buf::Unit => s.serialize_unit(),
            Buf::Bool(v) => s.serialize_bool(*v),
            Buf::U64(v) => s.serialize_u64(*v),
            Buf::I64(v) => s.serialize_i64(*v),
            Buf::F64(v) => s.serialize_f64(*v),
            Buf::Str(v) => s.serialize_str(v),
            Buf::String(v) => s.serialize_str(v),
            Buf::Bytes(v) => s.serialize_bytes(v),
            Buf::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Buf::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// The name under which serde_json asks a deserializer for a `RawValue`
/// (`deserialize_newtype_struct`); it takes a map of this name to the JSON text.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Deserializes `T` from a buffered value.
pub(crate) fn from_buf<'de, T: de::Deserialize<'de>, E: de::Error>(buf: Buf<'de>) -> Result<T, E> {
    T::deserialize(IntoDeserializer::<'de, E>::into_deserializer(buf))
}

/// Reads any value into a [`Buf`].
pub(crate) struct BufSeed;

impl<'de> DeserializeSeed<'de> for BufSeed {
    type Value = Buf<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Buf<'de>, D::Error> {
        deserializer.deserialize_any(BufVisitor)
    }
}

struct BufVisitor;

impl<'de> Visitor<'de> for BufVisitor {
    type Value = Buf<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Buf<'de>, E> {
        Ok(Buf::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Buf<'de>, E> {
        Ok(Buf::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Buf<'de>, E> {
        Ok(Buf::U64(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Buf<'de>, E> {
        Ok(Buf::F64(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Buf<'de>, E> {
        Ok(Buf::Str(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Buf<'de>, E> {
        Ok(Buf::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Buf<'de>, E> {
        Ok(Buf::String(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Buf<'de>, E> {
        Ok(Buf::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Buf<'de>, E> {
        Ok(Buf::Bytes(v))
    }
    fn visit_unit<E>(self) -> Result<Buf<'de>, E> {
        Ok(Buf::Unit)
    }
    fn visit_none<E>(self) -> Result<Buf<'de>, E> {
        Ok(Buf::Unit)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Buf<'de>, D::Error> {
        d.deserialize_any(BufVisitor)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Buf<'de>, D::Error> {
        d.deserialize_any(BufVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Buf<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(BufSeed)? {
            items.push(item);
        }
        Ok(Buf::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Buf<'de>, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key_seed(BufSeed)? {
            let value = map.next_value_seed(BufSeed)?;
            entries.push((key, value));
        }
        Ok(Buf::Map(entries))
    }
}

/// A [`Buf`] as a `Deserializer` with error type `E`.
pub(crate) struct BufDeserializer<'de, E> {
    buf: Buf<'de>,
    error: PhantomData<E>,
}

impl<'de, E: de::Error> IntoDeserializer<'de, E> for Buf<'de> {
    type Deserializer = BufDeserializer<'de, E>;

    fn into_deserializer(self) -> Self::Deserializer {
        BufDeserializer {
            buf: self,
            error: PhantomData,
        }
    }
}

impl<'de, E: de::Error> Deserializer<'de> for BufDeserializer<'de, E> {
    type Error = E;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.buf {
            Buf::Unit => visitor.visit_unit(),
            Buf::Bool(v) => visitor.visit_bool(v),
            Buf::U64(v) => visitor.visit_u64(v),
            Buf::I64(v) => visitor.visit_i64(v),
            Buf::F64(v) => visitor.visit_f64(v),
            Buf::Str(v) => visitor.visit_borrowed_str(v),
            Buf::String(v) => visitor.visit_string(v),
            Buf::Bytes(v) => visitor.visit_byte_buf(v),
            Buf::Seq(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter());
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Buf::Map(entries) => {
                let mut map = MapDeserializer::new(entries.into_iter());
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        match self.buf {
            Buf::Unit => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, E> {
        if name == RAW_VALUE_TOKEN {
            // A `MsgContent` that came before the frame's tag: its JSON again.
            let json = serde_json::to_string(&self.buf).map_err(de::Error::custom)?;
            return visitor.visit_map(MapDeserializer::new(std::iter::once((
                RAW_VALUE_TOKEN,
                json,
            ))));
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, E> {
        match self.buf {
            Buf::Str(v) => visitor.visit_enum(BorrowedStrDeserializer::new(v)),
            Buf::String(v) => visitor.visit_enum(StringDeserializer::new(v)),
            Buf::Map(entries) => visitor.visit_enum(MapAccessDeserializer::new(
                MapDeserializer::new(entries.into_iter()),
            )),
            _ => self.deserialize_any(visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, E> {
        drop(self);
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

/// Defines an internally tagged enum whose variants are all structs: the enum
/// with a derived `Serialize` (`#[serde(tag = $tag, rename_all = "snake_case")]`,
/// so the output is that of serde's derive), and a `Deserialize` through
/// [`Tagged`], each variant read by a derived struct with the same fields and
/// field attributes. `$tags` names the variant identifier type.
macro_rules! internally_tagged {
    (
        tag = $tag:literal, tags = $tags:ident;
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident {
                    $( $(#[$fmeta:meta])* $field:ident : $fty:ty ),* $(,)?
                }
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(::serde::Serialize)]
        #[serde(tag = $tag, rename_all = "snake_case")]
        $vis enum $name {
            $(
                $(#[$vmeta])*
                $variant { $( $(#[$fmeta])* $field: $fty ),* }
            ),*
        }

        /// The variant identifier (the tag's values).
        #[derive(::serde::Deserialize)]
        #[serde(variant_identifier, rename_all = "snake_case")]
        pub(crate) enum $tags {
            $( $(#[$vmeta])* $variant ),*
        }

        impl $crate::tagged::Tagged for $name {
            const TAG: &'static str = $tag;
            const CHECKS_SECOND_TAG: bool = true;
            const EXPECTING: &'static str = concat!("internally tagged enum ", stringify!($name));
            type Tag = $tags;

            fn from_rest<'de, D: ::serde::Deserializer<'de>>(
                tag: $tags,
                rest: D,
            ) -> Result<Self, D::Error> {
                match tag {
                    $(
                        $tags::$variant => {
                            #[derive(::serde::Deserialize)]
                            struct Fields {
                                $( $(#[$fmeta])* $field: $fty, )*
                                // Last, so that the sequence form is not changed.
                                #[serde(rename = $tag, default)]
                                _second_tag: $crate::tagged::SecondTag<$name>,
                            }
                            let f = <Fields as ::serde::Deserialize>::deserialize(rest)?;
                            Ok($name::$variant { $( $field: f.$field ),* })
                        }
                    )*
                }
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::tagged::deserialize_tagged(deserializer)
            }
        }
    };
}

pub(crate) use internally_tagged;
