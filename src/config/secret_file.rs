//! The `*_file` settings: each secret may stand in a file of its own instead of the config
//! (`[[tenants]] password_file`, `[admin] token_file`, `[auth.jwt] hs256_secret_file`,
//! `[upstream] password_file`), so that the config can live where many may read it (a
//! Kubernetes ConfigMap) and the secrets where few may (a Secret mounted as files).
//!
//! A file's content, less one trailing newline (as `echo` and most editors leave, and as a
//! Secret made with `kubectl create secret --from-file` keeps), is the value, exactly as if
//! it stood in the config. Setting a value and its file together is an error, and so is a
//! file that cannot be read, is not a regular file (a FIFO, a device), is empty, is not UTF-8
//! or is too large to be a secret. Files are read at every load (start, `check-config`,
//! SIGHUP, `POST /reload`), so a rotated file takes effect as a changed value in the config
//! would. Errors name the setting and the file, never what is in it.

use std::io::Read;

use super::*;

/// Past this a file is not a secret, and reading stops (a log file named by mistake must not
/// be read whole).
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A problem, as `validate` reports them.
type Problem = (Option<Range<usize>>, String);

/// The secret in `path`: its content less one trailing newline.
fn read(path: &Path) -> Result<Secret, String> {
    let shown = path.display();
    let mut options = std::fs::File::options();
    options.read(true);
    #[cfg(unix)]
    {
        // Opening a FIFO waits for a writer, maybe forever (a reload never ends): not here.
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options
        .open(path)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    // A FIFO, a device or a directory is no secret file (and reading one may never end).
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(format!("{shown} is not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(format!(
            "{shown} is larger than {MAX_SECRET_BYTES} bytes: not a secret"
        ));
    }
    let mut text = String::from_utf8(bytes).map_err(|_| format!("{shown} is not UTF-8 text"))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(format!("{shown} is empty"));
    }
    Ok(Secret(text))
}

/// Reads `file` into `value` unless `value` (or `other`, another way to give the same thing)
/// is set already; `what` names the setting in errors.
fn fill(
    value: &mut Option<Secret>,
    other: bool,
    file: &Option<Spanned<PathBuf>>,
    what: &str,
    problems: &mut Vec<Problem>,
) {
    let Some(file) = file else { return };
    let at = Some(file.span());
    if value.is_some() || other {
        problems.push((
            at,
            format!("{what}_file: set {what} or {what}_file, not both"),
        ));
        return;
    }
    match read(file.get_ref()) {
        Ok(secret) => *value = Some(secret),
        Err(e) => problems.push((at, format!("{what}_file: {e}"))),
    }
}

/// `url` with `password` in it; an error when the URL has a password of its own. A URL that
/// does not parse is left for `validate` to report.
pub(super) fn with_password(url: &mut Spanned<String>, password: &Secret) -> Result<(), String> {
    let Ok(mut parsed) = url::Url::parse(url.get_ref()) else {
        return Ok(());
    };
    if parsed.password().is_some() {
        return Err(format!(
            "upstream.password_file: {} has a password of its own; give it in one place",
            mask_url_password(url.get_ref())
        ));
    }
    // The URL's encoder leaves `%` alone, and the parsers decode it: escape it first.
    let escaped = password.expose().replace('%', "%25");
    if parsed.set_password(Some(&escaped)).is_ok() {
        *url = Spanned::new(url.span(), parsed.to_string());
    }
    Ok(())
}

impl Config {
    /// Reads every `*_file` setting into the value it stands for, returning the problems.
    pub(super) fn read_secret_files(&mut self) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (i, t) in self.tenants.iter_mut().enumerate() {
            let what = format!("tenants[{i}].password");
            let hashed = t.password_sha256.is_some();
            fill(
                &mut t.password,
                hashed,
                &t.password_file,
                &what,
                &mut problems,
            );
        }
        if let Some(admin) = &mut self.admin {
            let a = admin.get_mut();
            fill(
                &mut a.token,
                false,
                &a.token_file,
                "admin.token",
                &mut problems,
            );
        }
        if let Some(jwt) = &mut self.auth.jwt {
            let j = jwt.get_mut();
            let what = "auth.jwt.hs256_secret";
            fill(
                &mut j.hs256_secret,
                false,
                &j.hs256_secret_file,
                what,
                &mut problems,
            );
        }
        let up = &mut self.upstream;
        let mut password = None;
        fill(
            &mut password,
            false,
            &up.password_file,
            "upstream.password",
            &mut problems,
        );
        if let Some(p) = &password {
            for url in std::iter::once(&mut up.url).chain(&mut up.seeds) {
                if let Err(e) = with_password(url, p) {
                    problems.push((Some(url.span()), e));
                }
            }
        }
        up.file_password = password;
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own for one test, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let p = std::env::temp_dir()
                .join(format!("respite-secret-file-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        /// Writes `content` to `name` in the directory; its path as TOML text.
        fn file(&self, name: &str, content: &[u8]) -> String {
            let path = self.0.join(name);
            std::fs::write(&path, content).unwrap();
            path.display().to_string()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn errors(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_file_is_its_content_less_one_newline() {
        let dir = Dir::new("content");
        for (content, value) in [
            (&b"s3cret\n"[..], "s3cret"),
            (b"s3cret", "s3cret"),
            (b"s3cret\r\n", "s3cret"),
            (b"s3cret\n\n", "s3cret\n"),
            (b" spaced \n", " spaced "),
        ] {
            let f = dir.file("p", content);
            assert_eq!(read(Path::new(&f)).unwrap().expose(), value, "{content:?}");
        }
    }

    #[test]
    fn every_secret_setting_reads_its_file() {
        let dir = Dir::new("all");
        let (pa, tok, jwt, up) = (
            dir.file("pa", b"pa-secret\n"),
            dir.file("tok", b"the-token\n"),
            dir.file("jwt", b"jwt-key\n"),
            dir.file("up", b"p%41:@/ \xc3\xa9#?\n"),
        );
        let c = Config::parse(&format!(
            "[upstream]\nurl = \"redis://app@10.0.0.1:6390/2\"\npassword_file = \"{up}\"\n\
             [admin]\nlisten = \"127.0.0.1:9121\"\ntoken_file = \"{tok}\"\n\
             [auth.jwt]\nhs256_secret_file = \"{jwt}\"\n\
             [[tenants]]\nid = \"a\"\npassword_file = \"{pa}\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.tenants[0].password.as_ref().unwrap().expose(),
            "pa-secret"
        );
        assert_eq!(c.tenants[0].digest(), Some(sha256(b"pa-secret")));
        let admin = c.admin.as_ref().unwrap().get_ref();
        assert_eq!(admin.token.as_ref().unwrap().expose(), "the-token");
        let j = c.auth.jwt.as_ref().unwrap().get_ref();
        assert_eq!(j.hs256_secret.as_ref().unwrap().expose(), "jwt-key");
        // The password reaches Redis byte for byte, whatever it holds, with the URL's user.
        let addr = c.upstream_addr();
        assert_eq!(addr.password.unwrap().expose(), "p%41:@/ é#?");
        assert_eq!(addr.username.as_deref(), Some("app"));
        assert_eq!(
            (addr.host.as_str(), addr.port, addr.db),
            ("10.0.0.1", 6390, 2)
        );
        // Never in Debug output.
        let shown = format!("{c:?}");
        for secret in ["pa-secret", "the-token", "jwt-key", "p%41", "p%2541"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn the_upstream_password_goes_to_every_seed_without_one() {
        let dir = Dir::new("seeds");
        let up = dir.file("up", b"pw\n");
        let c = Config::parse(&format!(
            "[upstream]\nmode = \"cluster\"\nurl = \"redis://10.0.0.1:6379\"\n\
             seeds = [\"redis://10.0.0.2:6379\"]\npassword_file = \"{up}\"\n"
        ))
        .unwrap();
        for a in c.seed_addrs() {
            assert_eq!(a.password.unwrap().expose(), "pw");
            assert_eq!(a.username, None);
        }
        // A --upstream URL given later gets it too.
        let mut c = c;
        c.override_with(None, Some("redis://10.0.0.3:6379".into()))
            .unwrap();
        assert_eq!(c.upstream_addr().password.unwrap().expose(), "pw");
        let e = c
            .override_with(None, Some("redis://:other@10.0.0.3:6379".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has a password of its own"), "{e}");
        assert!(!e.contains("other"), "{e}");
    }

    #[test]
    fn each_mistake_names_the_setting_and_the_file_never_the_secret() {
        let dir = Dir::new("mistakes");
        let good = dir.file("good", b"hunter2\n");
        let empty = dir.file("empty", b"\n");
        let binary = dir.file("binary", b"\xff\xfe");
        let big = dir.file("big", &vec![b'x'; MAX_SECRET_BYTES as usize + 1]);
        let missing = dir.0.join("missing").display().to_string();
        let dir_path = dir.0.display().to_string();
        let cases = [
            (
                format!("[[tenants]]\nid = \"a\"\npassword = \"x\"\npassword_file = \"{good}\"\n"),
                "line 4, column 17: tenants[0].password_file: set tenants[0].password or \
                 tenants[0].password_file, not both"
                    .to_string(),
            ),
            (
                format!(
                    "[[tenants]]\nid = \"a\"\npassword_sha256 = \"{}\"\npassword_file = \"{good}\"\n",
                    "0".repeat(64)
                ),
                "not both".into(),
            ),
            (
                format!("[[tenants]]\nid = \"a\"\npassword_file = \"{missing}\"\n"),
                format!("line 3, column 17: tenants[0].password_file: cannot read {missing}: "),
            ),
            (
                format!("[[tenants]]\nid = \"a\"\npassword_file = \"{empty}\"\n"),
                format!("tenants[0].password_file: {empty} is empty"),
            ),
            (
                format!("[admin]\nlisten = \"127.0.0.1:1\"\ntoken_file = \"{dir_path}\"\n"),
                format!("admin.token_file: {dir_path} is not a regular file"),
            ),
            (
                format!("[[tenants]]\nid = \"a\"\npassword_file = \"{binary}\"\n"),
                format!("{binary} is not UTF-8 text"),
            ),
            (
                format!("[[tenants]]\nid = \"a\"\npassword_file = \"{big}\"\n"),
                format!("{big} is larger than 65536 bytes"),
            ),
            (
                format!("[admin]\nlisten = \"127.0.0.1:1\"\ntoken = \"t\"\ntoken_file = \"{good}\"\n"),
                "admin.token_file: set admin.token or admin.token_file, not both".into(),
            ),
            (
                format!("[admin]\nlisten = \"127.0.0.1:1\"\ntoken_file = \"{missing}\"\n"),
                format!("admin.token_file: cannot read {missing}"),
            ),
            (
                format!("[auth.jwt]\nhs256_secret = \"k\"\nhs256_secret_file = \"{good}\"\n"),
                "auth.jwt.hs256_secret_file: set auth.jwt.hs256_secret or".into(),
            ),
            (
                format!("[auth.jwt]\nhs256_secret_file = \"{empty}\"\n"),
                format!("auth.jwt.hs256_secret_file: {empty} is empty"),
            ),
            (
                format!("[upstream]\npassword_file = \"{missing}\"\n"),
                format!("line 2, column 17: upstream.password_file: cannot read {missing}"),
            ),
            (
                format!(
                    "[upstream]\nurl = \"redis://u:hunter3@h:1\"\npassword_file = \"{good}\"\n"
                ),
                "line 2, column 7: upstream.password_file: redis://u:MASKED@h:1 has a password \
                 of its own"
                    .into(),
            ),
        ];
        for (text, want) in cases {
            let got = errors(&text);
            assert!(got.contains(&want), "{text}\nwanted {want:?}\ngot {got:?}");
            // One error, not a second one for the value the file did not give.
            assert_eq!(got.lines().count(), 1, "{text}\n{got}");
            assert!(!got.contains("hunter"), "{got}");
        }
    }
}
