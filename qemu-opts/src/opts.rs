//! The grammar (`key=value,...`) and the parsed list with its accessors.

use std::fmt;

use crate::{Error, Result, SizeUnit, parse_bool, parse_number, parse_size};

/// How an option string is read. QEMU has two grammars and both are here:
///
/// - [`Grammar::opts`], QEMU's `QemuOpts` (`-drive`, `-device`, `-object`, `-machine`):
///   a `key` alone means `key=on`, and a repeated key is allowed (the last one wins).
/// - [`Grammar::keyval`], QEMU's `keyval` (qemu-storage-daemon's `--blockdev`,
///   `--export`): every item is `key=value`, and a repeated key is an error.
///
/// Either may name an *implied key* ([`Grammar::implied`]): a first item without `=` is
/// that key's value (`-device virtio-blk-pci,...` means `driver=virtio-blk-pci,...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grammar {
    implied: Option<&'static str>,
    strict: bool,
}

impl Grammar {
    /// QEMU's `QemuOpts`: `key` alone is `key=on`, repeats allowed (last wins).
    pub const fn opts() -> Grammar {
        Grammar {
            implied: None,
            strict: false,
        }
    }

    /// QEMU's `keyval`, the strict form: `key=value` only, each key once.
    pub const fn keyval() -> Grammar {
        Grammar {
            implied: None,
            strict: true,
        }
    }

    /// The same grammar, with a first item without `=` taken as `key`'s value.
    pub const fn implied(self, key: &'static str) -> Grammar {
        Grammar {
            implied: Some(key),
            strict: self.strict,
        }
    }
}

/// Splits a QEMU option string at single commas; `,,` stands for a literal comma.
/// There is always at least one item (`""` gives one empty item).
///
/// ```
/// assert_eq!(qemu_opts::split_commas("file=a,,b.img,if=none"), ["file=a,b.img", "if=none"]);
/// ```
pub fn split_commas(text: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' && chars.next_if_eq(&',').is_none() {
            items.push(String::new());
        } else if let Some(item) = items.last_mut() {
            item.push(c);
        }
    }
    items
}

/// Writes `text` with every comma doubled, so that [`split_commas`] reads it back whole.
fn write_escaped(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    for (i, part) in text.split(',').enumerate() {
        if i > 0 {
            f.write_str(",,")?;
        }
        f.write_str(part)?;
    }
    Ok(())
}

/// A parsed option string: its `(key, value)` pairs in the order given, and which keys
/// the typed accessors have taken.
///
/// Two ways to read it:
/// - peek: [`get`](Opts::get) (the last value of a key), [`iter`](Opts::iter),
///   [`unknown_keys`](Opts::unknown_keys); nothing is marked;
/// - take: [`string`](Opts::string), [`required`](Opts::required),
///   [`flag`](Opts::flag), [`number`](Opts::number), [`size`](Opts::size) mark the key
///   used and return typed values or an [`Error`] naming the option and the key; then
///   [`finish`](Opts::finish) reports the first key nobody took.
#[derive(Clone, Debug, Default)]
pub struct Opts {
    option: String,
    pairs: Vec<(String, String)>,
    used: Vec<bool>,
}

/// Equal when they name the same option and hold the same pairs in the same order
/// (which keys were taken does not matter).
impl PartialEq for Opts {
    fn eq(&self, other: &Opts) -> bool {
        self.option == other.option && self.pairs == other.pairs
    }
}

impl Eq for Opts {}

impl Opts {
    /// Parses `text`, the argument of `option` (which errors name), in `grammar`.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyKey`] (`=x`), [`Error::EmptyItem`] (`a=1,` in [`Grammar::opts`]),
    /// [`Error::MissingEquals`] and [`Error::Duplicate`] (in [`Grammar::keyval`]).
    pub fn parse(option: &str, text: &str, grammar: Grammar) -> Result<Opts> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (index, item) in split_commas(text).into_iter().enumerate() {
            let (key, value) = match (item.split_once('='), grammar.implied) {
                (Some(("", _)), _) => {
                    return Err(Error::EmptyKey {
                        option: option.to_owned(),
                        item,
                    });
                }
                (Some((k, v)), _) => (k.to_owned(), v.to_owned()),
                (None, Some(implied)) if index == 0 => (implied.to_owned(), item),
                (None, _) if grammar.strict => {
                    return Err(Error::MissingEquals {
                        option: option.to_owned(),
                        item,
                    });
                }
                (None, _) if item.is_empty() => {
                    return Err(Error::EmptyItem {
                        option: option.to_owned(),
                    });
                }
                // QEMU's `key` alone means `key=on`.
                (None, _) => (item, "on".to_owned()),
            };
            if grammar.strict && pairs.iter().any(|(k, _)| *k == key) {
                return Err(Error::Duplicate {
                    option: option.to_owned(),
                    key,
                });
            }
            pairs.push((key, value));
        }
        Ok(Opts::from_pairs(option, pairs))
    }

    /// Builds a list from pairs (a device the program adds itself, a QMP command's
    /// arguments), as if parsed from `option`.
    pub fn from_pairs(option: &str, pairs: Vec<(String, String)>) -> Opts {
        Opts {
            option: option.to_owned(),
            used: vec![false; pairs.len()],
            pairs,
        }
    }

    /// The option this list belongs to, as errors name it.
    pub fn option(&self) -> &str {
        &self.option
    }

    /// The last value of `key` (QEMU: a later value wins), without marking it used.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every pair, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The keys not in `known`, in the order given (once per appearance).
    pub fn unknown_keys<'a>(&'a self, known: &[&str]) -> Vec<&'a str> {
        self.iter()
            .map(|(k, _)| k)
            .filter(|k| !known.contains(k))
            .collect()
    }

    /// Removes every pair of `key`; returns the last value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let mut last = None;
        let mut i = 0;
        while i < self.pairs.len() {
            if self.pairs[i].0 == key {
                last = Some(self.pairs.remove(i).1);
                self.used.remove(i);
            } else {
                i += 1;
            }
        }
        last
    }

    /// Takes `key`: its last value, marking every pair of it used.
    pub fn string(&mut self, key: &str) -> Option<String> {
        let mut value = None;
        for ((k, v), used) in self.pairs.iter().zip(self.used.iter_mut()) {
            if k == key {
                *used = true;
                value = Some(v);
            }
        }
        value.cloned()
    }

    /// Takes a key that must be there.
    ///
    /// # Errors
    ///
    /// [`Error::Missing`].
    pub fn required(&mut self, key: &str) -> Result<String> {
        self.string(key).ok_or_else(|| Error::Missing {
            option: self.option.clone(),
            key: key.to_owned(),
        })
    }

    /// Takes an on/off key ([`parse_bool`]'s spellings); `default` when absent.
    ///
    /// # Errors
    ///
    /// [`Error::NotBool`].
    pub fn flag(&mut self, key: &str, default: bool) -> Result<bool> {
        match self.string(key) {
            None => Ok(default),
            Some(v) => parse_bool(&v).ok_or_else(|| Error::NotBool {
                option: self.option.clone(),
                key: key.to_owned(),
                value: v,
            }),
        }
    }

    /// Takes a number ([`parse_number`]'s spellings) that must fit `T`.
    ///
    /// # Errors
    ///
    /// [`Error::NotNumber`], also for a number too large for `T`.
    pub fn number<T: TryFrom<u64>>(&mut self, key: &str) -> Result<Option<T>> {
        let Some(v) = self.string(key) else {
            return Ok(None);
        };
        match parse_number(&v).and_then(|n| T::try_from(n).ok()) {
            Some(n) => Ok(Some(n)),
            None => Err(Error::NotNumber {
                option: self.option.clone(),
                key: key.to_owned(),
                value: v,
            }),
        }
    }

    /// Takes a size ([`parse_size`]'s spellings); a bare number is in `unit`.
    ///
    /// # Errors
    ///
    /// [`Error::NotSize`].
    pub fn size(&mut self, key: &str, unit: SizeUnit) -> Result<Option<u64>> {
        let Some(v) = self.string(key) else {
            return Ok(None);
        };
        match parse_size(&v, unit) {
            Some(n) => Ok(Some(n)),
            None => Err(Error::NotSize {
                option: self.option.clone(),
                key: key.to_owned(),
                value: v,
            }),
        }
    }

    /// An [`Error::Invalid`] about this option, for what the caller refuses itself.
    pub fn invalid(&self, message: impl Into<String>) -> Error {
        Error::Invalid {
            option: self.option.clone(),
            message: message.into(),
        }
    }

    /// Checks that every key was taken.
    ///
    /// # Errors
    ///
    /// [`Error::Unknown`] naming the first key left, in the order given.
    pub fn finish(&self) -> Result<()> {
        match self.pairs.iter().zip(&self.used).find(|(_, used)| !**used) {
            Some(((key, _), _)) => Err(Error::Unknown {
                option: self.option.clone(),
                key: key.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// Writes the pairs back in QEMU syntax (`key=value,...`, commas doubled); parsing the
/// result with [`Grammar::opts`] gives the same pairs.
impl fmt::Display for Opts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write_escaped(f, key)?;
            f.write_str("=")?;
            write_escaped(f, value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(text: &str, grammar: Grammar) -> Result<Opts> {
        Opts::parse("-x", text, grammar)
    }

    #[test]
    fn commas_double_to_escape() {
        assert_eq!(split_commas(""), [""]);
        assert_eq!(split_commas("a,,b"), ["a,b"]);
        assert_eq!(split_commas("a,,,b"), ["a,", "b"]);
        assert_eq!(split_commas("a,"), ["a", ""]);
        assert_eq!(split_commas(",,"), [","]);
    }

    #[test]
    fn qemu_opts_rules() {
        let g = Grammar::opts().implied("driver");
        let kv = opts("virtio-blk-pci,drive=d0,drive=d1,x", g).unwrap();
        assert_eq!(kv.get("driver"), Some("virtio-blk-pci"));
        assert_eq!(kv.get("drive"), Some("d1"));
        assert_eq!(kv.get("x"), Some("on"));
        assert_eq!(kv.len(), 4);
        assert_eq!(opts("a=1,,", Grammar::opts()).unwrap().get("a"), Some("1,"));
        assert_eq!(
            opts("a=1,", Grammar::opts()).unwrap_err().to_string(),
            "-x: empty item"
        );
        assert_eq!(
            opts("=x", Grammar::opts()).unwrap_err().to_string(),
            "-x: empty key in '=x'"
        );
        // Only the first item can be the implied key's value.
        let kv = opts("a=1,b", g).unwrap();
        assert_eq!(kv.get("driver"), None);
        assert_eq!(kv.get("b"), Some("on"));
        // An empty first item is an empty implied value, for the caller to refuse.
        assert_eq!(opts(",a=1", g).unwrap().get("driver"), Some(""));
    }

    #[test]
    fn keyval_rules() {
        let g = Grammar::keyval();
        assert_eq!(
            opts("driver", g).unwrap_err().to_string(),
            "-x: expected key=value, got 'driver'"
        );
        assert_eq!(
            opts("a=1,a=2", g).unwrap_err().to_string(),
            "-x: parameter 'a' given twice"
        );
        assert_eq!(
            opts("", g).unwrap_err().to_string(),
            "-x: expected key=value, got ''"
        );
        let kv = opts("iothread,id=io0", g.implied("qom-type")).unwrap();
        assert_eq!(kv.get("qom-type"), Some("iothread"));
    }

    #[test]
    fn typed_accessors_name_option_and_key() {
        let mut kv = Opts::parse(
            "--export",
            "id=e,writable=on,num-queues=0x2,size=1G,big=70000,ro=maybe,extra=1",
            Grammar::keyval(),
        )
        .unwrap();
        assert_eq!(kv.required("id").unwrap(), "e");
        assert!(kv.flag("writable", false).unwrap());
        assert!(kv.flag("absent", true).unwrap());
        assert_eq!(kv.number::<u16>("num-queues").unwrap(), Some(2));
        assert_eq!(kv.size("size", SizeUnit::Bytes).unwrap(), Some(1 << 30));
        assert_eq!(kv.number::<u32>("absent").unwrap(), None);
        assert_eq!(
            kv.number::<u16>("big").unwrap_err().to_string(),
            "--export: parameter 'big' expects a number, not '70000'"
        );
        assert_eq!(
            kv.flag("ro", false).unwrap_err().to_string(),
            "--export: parameter 'ro' expects 'on' or 'off', not 'maybe'"
        );
        assert_eq!(
            kv.required("node-name").unwrap_err().to_string(),
            "--export: parameter 'node-name' is missing"
        );
        assert_eq!(
            kv.finish().unwrap_err().to_string(),
            "--export: invalid parameter 'extra'"
        );
        assert_eq!(kv.string("extra").as_deref(), Some("1"));
        kv.finish().unwrap();
        assert_eq!(
            kv.invalid("type 'nbd' is not supported").to_string(),
            "--export: type 'nbd' is not supported"
        );
    }

    #[test]
    fn a_repeated_key_is_taken_whole() {
        let mut kv = opts("a=1,b=2,a=3", Grammar::opts()).unwrap();
        assert_eq!(kv.string("a").as_deref(), Some("3"));
        assert_eq!(kv.unknown_keys(&["a"]), ["b"]);
        assert_eq!(kv.finish().unwrap_err().reason(), "invalid parameter 'b'");
        assert_eq!(kv.remove("a").as_deref(), Some("3"));
        assert_eq!(kv.iter().collect::<Vec<_>>(), [("b", "2")]);
        assert_eq!(kv.remove("a"), None);
    }

    #[test]
    fn display_escapes_commas() {
        let kv = opts("file=a,,b,x,id=,,", Grammar::opts()).unwrap();
        assert_eq!(kv.to_string(), "file=a,,b,x=on,id=,,");
        assert_eq!(opts(&kv.to_string(), Grammar::opts()).unwrap(), kv);
    }
}
