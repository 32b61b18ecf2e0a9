//! `mesh members`.

use super::{print_json, table, Format, OutputOpts};
use crate::api::{self, MemberBody};

/// Lists members: name, address, status.
pub(crate) async fn run(opts: &OutputOpts) -> anyhow::Result<()> {
    let members: Vec<MemberBody> = opts.client.client().get(api::MEMBERS).await?;
    match opts.format {
        Format::Json => print_json(&members),
        Format::Table => {
            let rows = members.iter().map(|m| vec![m.name.clone(), m.addr.clone(), m.status.clone()]);
            print!("{}", table::render(&["NAME", "ADDR", "STATUS"], rows));
            Ok(())
        }
    }
}
