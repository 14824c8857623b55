// `sqlx::migrate!` embeds the migration files at compile time; rebuild when
// any of them changes (as sqlx's documentation advises).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
