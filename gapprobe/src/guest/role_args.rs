//! Parsing a role's `gapprobe.args=` words with the role's clap parser, so that a bad
//! argument becomes one console line that names it.

use clap::Parser;

/// Parses `words` as the arguments of `role`; the error is clap's first line.
pub fn parse<P: Parser>(role: &str, words: &[String]) -> anyhow::Result<P> {
    let argv = std::iter::once(role.to_string()).chain(words.iter().cloned());
    P::try_parse_from(argv).map_err(|err| {
        let message = err.to_string();
        anyhow::anyhow!(
            "gapprobe.args: {}",
            message.lines().next().unwrap_or_default()
        )
    })
}
