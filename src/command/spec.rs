//! The shapes of the generated command table (`table.rs`): what Redis 7 says about each
//! command in `COMMAND INFO`.

/// How Redis finds where a key specification's keys begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeginSearch {
    /// At a fixed argument index (0 is the command name).
    Index(i32),
    /// After the first argument equal to `keyword` (ASCII case-insensitive), searching forward
    /// from `start_from`, or backward from the end when it is negative.
    Keyword {
        keyword: &'static [u8],
        start_from: i32,
    },
    /// Redis cannot say (e.g. SORT's BY/GET patterns): such keys cannot be rewritten.
    Unknown,
}

/// How Redis finds the keys once it knows where they begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindKeys {
    /// Keys up to `last_key` (relative; negative counts from the end), every `key_step`;
    /// with `limit` > 0 only the first 1/limit of the remaining arguments.
    Range {
        last_key: i32,
        key_step: i32,
        limit: i32,
    },
    /// The number of keys is an argument (`key_num_idx`), keys start `first_key` after the
    /// begin index.
    KeyNum {
        key_num_idx: i32,
        first_key: i32,
        key_step: i32,
    },
    Unknown,
}

#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    pub flags: u16,
    pub begin: BeginSearch,
    pub find: FindKeys,
}

#[derive(Debug)]
pub struct CommandSpec {
    /// Lowercase; for a subcommand, the part after `|`.
    pub name: &'static [u8],
    /// Redis arity: `n` exactly n arguments (with the name), `-n` at least n.
    pub arity: i32,
    pub flags: u32,
    pub acl: u32,
    pub key_specs: &'static [KeySpec],
    pub subcommands: &'static [CommandSpec],
}
