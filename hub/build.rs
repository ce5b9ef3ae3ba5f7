// `sqlx::migrate!` embeds the migrations at compile time; without this, adding
// a new file to migrations/ would not rebuild the hub.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
