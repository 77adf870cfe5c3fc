//! The guest's instructions: `gapprobe.*` keys on the kernel command line. The kernel keeps
//! dotted parameters away from init's argv, so PID 1 reads /proc/cmdline itself.
//!
//! | key | meaning |
//! |---|---|
//! | `gapprobe.role=ROLE` | `user` (the user target), `hwlat` (an L2's hwlat-style detector), `nested` (L1 of the kvm target) |
//! | `gapprobe.args="..."` | arguments for the role, as on the host command line |
//! | `gapprobe.modules=a.ko,b.ko` | modules under /modules to load first, in this order |
//! | `gapprobe.dump=0xADDR,0xSIZE` | the host dump region (added by our VMM) |

/// Prefix of every key gapprobe reads.
pub const KEY_PREFIX: &str = "gapprobe.";

/// Splits a kernel command line into words, honouring double quotes as the kernel does
/// (`key="a b"` is one word, quotes removed).
pub fn split_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_quotes = false;
    let mut started = false;
    for ch in cmdline.trim().chars() {
        match ch {
            '"' => {
                in_quotes = !in_quotes;
                started = true;
            }
            ch if ch.is_whitespace() && !in_quotes => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            ch => {
                word.push(ch);
                started = true;
            }
        }
    }
    if started {
        words.push(word);
    }
    words
}

/// The value of `gapprobe.<key>=` on the command line, if present.
pub fn value(cmdline: &str, key: &str) -> Option<String> {
    let wanted = format!("{KEY_PREFIX}{key}=");
    split_words(cmdline)
        .into_iter()
        .find_map(|word| word.strip_prefix(&wanted).map(str::to_string))
}

/// Splits an argument string into words (no quoting inside: the kernel already removed it).
pub fn args(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CMDLINE: &str = r#"console=ttyS0 quiet gapprobe.role=user gapprobe.args="--max-gap 20ms --duration 5s" gapprobe.modules=irqbypass.ko,kvm.ko gapprobe.dump=0xf0000000,0x1000000"#;

    #[test]
    fn reads_keys_with_quoted_values() {
        assert_eq!(value(CMDLINE, "role").as_deref(), Some("user"));
        assert_eq!(
            value(CMDLINE, "args").as_deref(),
            Some("--max-gap 20ms --duration 5s")
        );
        assert_eq!(
            value(CMDLINE, "modules").as_deref(),
            Some("irqbypass.ko,kvm.ko")
        );
        assert_eq!(value(CMDLINE, "nothing"), None);
        assert_eq!(split_words(CMDLINE)[0], "console=ttyS0");
    }

    #[test]
    fn empty_quotes_are_an_empty_value() {
        assert_eq!(value(r#"gapprobe.args="""#, "args").as_deref(), Some(""));
    }
}
