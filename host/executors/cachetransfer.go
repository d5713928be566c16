package executors

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/host/cachestore"
	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// ObjectStore signs requests for cache objects that the instance then makes itself;
// cachestore.Store is one.
type ObjectStore interface {
	// Describe names the store in messages, without credentials.
	Describe() string
	// Presign signs a GET (download) or PUT (upload) of object, valid for ttl.
	Presign(ctx context.Context, method, object string, ttl time.Duration) (cachestore.Request, error)
}

// SharedCache is the job's cache in object storage ([runners.cache]).
type SharedCache struct {
	Store ObjectStore
	// Object names the object of a cache key (GitLab Runner's layout); it refuses a
	// key that would leave the project's part of the bucket.
	Object func(key string) (string, error)
	// MaxArchiveSize caps an archive in bytes (MaxUploadedArchiveSize); 0 = no cap.
	MaxArchiveSize int64
	// HTTP makes the transfers the runner host relays when the job's environment has
	// no HTTP client (http.DefaultClient when nil).
	HTTP *http.Client
}

// NewSharedCache is the shared cache of a job of project projectID, run for the runner
// whose token is token, in store: objects named as [runners.cache] c says (GitLab
// Runner's layout), archives capped at its MaxUploadedArchiveSize.
func NewSharedCache(store ObjectStore, c *config.Cache, token string, projectID int64) *SharedCache {
	return &SharedCache{
		Store: store,
		Object: func(key string) (string, error) {
			return cachestore.ObjectName(c, token, projectID, key)
		},
		MaxArchiveSize: c.MaxUploadedArchiveSize,
	}
}

// The direct transfers run in the job's environment with its own shell, and report
// how they went on a line of their own starting with transferMark, which the runtime
// reads and never copies to the log (the signed URL stays out of the log too: it is
// passed in the environment, and the output is redacted).
const (
	transferMark  = "flotilla-cache:"
	urlVar        = "FLOTILLA_CACHE_URL"
	headerVarStem = "FLOTILLA_CACHE_HEADER_"
)

// downloadScript fetches $FLOTILLA_CACHE_URL with curl, or busybox/GNU wget, and
// unpacks it into the working directory: a gzip tar (Flotilla's archives) or a zip
// (GitLab Runner's). It reports "ok SIZE", "status CODE BODY", "unreachable MESSAGE",
// "no-client" (neither curl nor wget), "no-unzip" or "extract-failed".
const downloadScript = `t="${TMPDIR:-/tmp}/flotilla-cache-get.$$"
rm -f "$t" "$t.err"
set --
for h in HEADERS; do set -- "$@" --header "$h"; done
if command -v curl >/dev/null 2>&1; then
  if code=$(curl -sS -o "$t" -w '%{http_code}' "$@" "$FLOTILLA_CACHE_URL" 2>"$t.err"); then :; else
    echo "flotilla-cache: unreachable $(head -c 300 "$t.err" | tr '\n' ' ')"; rm -f "$t" "$t.err"; exit 0
  fi
elif command -v wget >/dev/null 2>&1; then
  if wget -q -O "$t" "$@" "$FLOTILLA_CACHE_URL" 2>"$t.err"; then code=200; else
    code=$(sed -n 's/.*HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p' "$t.err" | head -n 1)
    if [ -z "$code" ]; then echo "flotilla-cache: unreachable $(head -c 300 "$t.err" | tr '\n' ' ')"; rm -f "$t" "$t.err"; exit 0; fi
  fi
else
  echo "flotilla-cache: no-client"; exit 0
fi
case "$code" in
2??) ;;
*) echo "flotilla-cache: status $code $(head -c 300 "$t" 2>/dev/null | tr '\n' ' ')"; rm -f "$t" "$t.err"; exit 0 ;;
esac
if [ "$(head -c 2 "$t")" = PK ]; then
  if ! command -v unzip >/dev/null 2>&1; then echo "flotilla-cache: no-unzip"; rm -f "$t" "$t.err"; exit 0; fi
  if unzip -qo "$t" 2>"$t.err"; then :; else echo "flotilla-cache: extract-failed $(head -c 300 "$t.err" | tr '\n' ' ')"; rm -f "$t" "$t.err"; exit 0; fi
elif tar -xzf "$t" 2>"$t.err"; then :; else
  echo "flotilla-cache: extract-failed $(head -c 300 "$t.err" | tr '\n' ' ')"; rm -f "$t" "$t.err"; exit 0
fi
echo "flotilla-cache: ok $(wc -c < "$t")"
rm -f "$t" "$t.err"`

// uploadScript packs the cache (PACK, PackScript's command) into a file and PUTs it to
// $FLOTILLA_CACHE_URL with curl (a signed PUT needs the length up front). It reports
// "ok SIZE", "empty", "too-big SIZE", "status CODE BODY", "unreachable MESSAGE",
// "pack-failed" or "no-client" (no curl: the runner host relays instead).
const uploadScript = `command -v curl >/dev/null 2>&1 || { echo "flotilla-cache: no-client"; exit 0; }
t="${TMPDIR:-/tmp}/flotilla-cache-put.$$"
rm -f "$t" "$t.err" "$t.out"
if ( PACK ) >"$t" 2>"$t.err"; then cat "$t.err"; else cat "$t.err"; echo "flotilla-cache: pack-failed"; rm -f "$t" "$t.err"; exit 0; fi
size=$(wc -c < "$t" | tr -d ' ')
if [ "$size" -eq 0 ]; then echo "flotilla-cache: empty"; rm -f "$t" "$t.err"; exit 0; fi
if [ MAX -gt 0 ] && [ "$size" -gt MAX ]; then echo "flotilla-cache: too-big $size"; rm -f "$t" "$t.err"; exit 0; fi
set --
for h in HEADERS; do set -- "$@" --header "$h"; done
if code=$(curl -sS -o "$t.out" -w '%{http_code}' -X PUT -T "$t" "$@" "$FLOTILLA_CACHE_URL" 2>"$t.err"); then :; else
  echo "flotilla-cache: unreachable $(head -c 300 "$t.err" | tr '\n' ' ')"; rm -f "$t" "$t.err" "$t.out"; exit 0
fi
case "$code" in
2??) echo "flotilla-cache: ok $size" ;;
*) echo "flotilla-cache: status $code $(head -c 300 "$t.out" 2>/dev/null | tr '\n' ' ')" ;;
esac
rm -f "$t" "$t.err" "$t.out"`

// transferReport is what a direct transfer said of itself.
type transferReport struct {
	word   string // ok, status, unreachable, no-client, …
	detail string
	other  []string // the script's other output lines (pack messages)
}

// runTransfer runs script in the job's environment with req in its variables and
// reads its report; the output is redacted of the signed URL.
func runTransfer(ctx context.Context, env Env, script string, req cachestore.Request) (transferReport, error) {
	vars := jobs.Variables{{Key: urlVar, Value: req.URL}}
	refs := make([]string, 0, len(req.Header))
	for name, values := range req.Header {
		for _, v := range values {
			key := headerVarStem + strconv.Itoa(len(refs))
			vars = append(vars, jobs.Variable{Key: key, Value: name + ": " + v})
			refs = append(refs, `"$`+key+`"`)
		}
	}
	script = strings.Replace(script, "HEADERS", strings.Join(refs, " "), 1)
	paths := env.Paths()
	var out bytes.Buffer
	code, err := env.Exec(ctx, Script{Dir: paths.ProjectDir, FileVarDir: paths.TmpDir, Variables: vars,
		Commands: []string{script}, Quiet: true}, &out)
	if err != nil {
		return transferReport{}, err
	}
	text := strings.ReplaceAll(out.String(), req.URL, cachestore.Redact(req.URL))
	var r transferReport
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, transferMark+" "); ok {
			r.word, r.detail, _ = strings.Cut(rest, " ")
			continue
		}
		r.other = append(r.other, line)
	}
	if r.word == "" {
		return r, fmt.Errorf("the transfer script ended with exit code %d and no report: %s", code, strings.Join(r.other, "; "))
	}
	return r, nil
}

// refusal explains an HTTP status the store answered with.
func (s *SharedCache) refusal(op, object, code, body string) error {
	msg := fmt.Sprintf("%s refused the %s of %s (HTTP %s%s)", s.Store.Describe(), op, object, code, storeErrorCode(body))
	if code == "401" || code == "403" {
		msg += ": check the credentials in [runners.cache]"
	}
	return errors.New(msg)
}

// storeErrorCode picks the error code out of an S3/GCS/Azure XML error body.
func storeErrorCode(body string) string {
	_, rest, ok := strings.Cut(body, "<Code>")
	if !ok {
		return ""
	}
	code, _, ok := strings.Cut(rest, "</Code>")
	if !ok || len(code) > 80 {
		return ""
	}
	return " " + code
}

// download restores key from the store into the project directory: directly from the
// instance when its environment has curl or wget, else relayed by the runner host.
func (s *SharedCache) download(ctx context.Context, env Env, key string, ttl time.Duration, log *Trace) (string, error) {
	object, err := s.Object(key)
	if err != nil {
		return "", err
	}
	req, err := s.Store.Presign(ctx, http.MethodGet, object, ttl)
	if err != nil {
		return "", err
	}
	r, err := runTransfer(ctx, env, downloadScript, req)
	if err != nil {
		return "", err
	}
	switch r.word {
	case "ok":
		return fmt.Sprintf(" from %s (%s, downloaded by the instance)", s.Store.Describe(), sizeWord(r.detail)), nil
	case "status":
		code, body, _ := strings.Cut(r.detail, " ")
		if code == "404" {
			return "", errCacheMissing
		}
		return "", s.refusal("download", object, code, body)
	case "extract-failed":
		return "", fmt.Errorf("extracting the archive from %s: %s", object, r.detail)
	}
	fmt.Fprintf(log, "The job's environment %s; the runner host relays cache %q\n", relayReason(r, "curl or wget"), key)
	size, err := s.relayDownload(ctx, env, req, object)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf(" from %s (%s, relayed by the runner host)", s.Store.Describe(), byteSize(size)), nil
}

// relayReason says why a direct transfer did not happen; clients names the programs
// the transfer looks for.
func relayReason(r transferReport, clients string) string {
	switch r.word {
	case "no-client":
		return "has no " + clients
	case "no-unzip":
		return "has no unzip for GitLab Runner's zip archive"
	case "unreachable":
		return "cannot reach the store (" + strings.TrimSpace(r.detail) + ")"
	}
	return "could not transfer (" + r.word + " " + r.detail + ")"
}

func sizeWord(n string) string {
	v, err := strconv.ParseInt(strings.TrimSpace(n), 10, 64)
	if err != nil {
		return n + " bytes"
	}
	return byteSize(v)
}

func (s *SharedCache) client() *http.Client {
	if s.HTTP != nil {
		return s.HTTP
	}
	return http.DefaultClient
}

// relayDownload fetches req on the runner host and unpacks it in the job's
// environment; a zip (GitLab Runner's format) is turned into a gzip tar on the way.
func (s *SharedCache) relayDownload(ctx context.Context, env Env, req cachestore.Request, object string) (int64, error) {
	hreq, err := http.NewRequestWithContext(ctx, req.Method, req.URL, nil)
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", cachestore.Redact(req.URL), err)
	}
	hreq.Header = req.Header.Clone()
	resp, err := s.client().Do(hreq)
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", object, redactErr(err, req.URL))
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return 0, errCacheMissing
	}
	if resp.StatusCode/100 != 2 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return 0, s.refusal("download", object, strconv.Itoa(resp.StatusCode), string(body))
	}
	tmp, err := os.CreateTemp("", "flotilla-cache-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	size, err := io.Copy(tmp, resp.Body)
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", object, redactErr(err, req.URL))
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	var magic [2]byte
	_, _ = io.ReadFull(tmp, magic[:])
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	if string(magic[:]) != "PK" {
		return size, env.Unpack(ctx, tmp)
	}
	zr, err := zip.NewReader(tmp, size)
	if err != nil {
		return 0, fmt.Errorf("reading the zip archive %s: %w", object, err)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(zipToTarGz(pw, zr)) }()
	defer pr.Close()
	return size, env.Unpack(ctx, pr)
}

// zipToTarGz rewrites a zip archive as a gzip tar, keeping names, modes and times.
func zipToTarGz(w io.Writer, zr *zip.Reader) error {
	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	for _, f := range zr.File {
		hdr, err := tar.FileInfoHeader(f.FileInfo(), "")
		if err != nil {
			return err
		}
		hdr.Name = f.Name
		if f.Mode()&os.ModeSymlink != 0 {
			rc, err := f.Open()
			if err != nil {
				return err
			}
			target, err := io.ReadAll(io.LimitReader(rc, 4096))
			rc.Close()
			if err != nil {
				return err
			}
			hdr.Linkname = string(target)
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			rc, err := f.Open()
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, rc)
			rc.Close()
			if err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return gz.Close()
}

// upload saves spec's files under key in the store: packed and uploaded by the
// instance when its environment has curl, else relayed by the runner host.
func (s *SharedCache) upload(ctx context.Context, env Env, key string, spec PackSpec, ttl time.Duration, log *Trace) (int64, string, error) {
	object, err := s.Object(key)
	if err != nil {
		return 0, "", err
	}
	req, err := s.Store.Presign(ctx, http.MethodPut, object, ttl)
	if err != nil {
		return 0, "", err
	}
	pack, err := PackScript(env.Paths().ProjectDir, spec)
	if err != nil {
		return 0, "", err
	}
	script := strings.ReplaceAll(strings.Replace(uploadScript, "PACK", pack, 1), "MAX", strconv.FormatInt(s.MaxArchiveSize, 10))
	r, err := runTransfer(ctx, env, script, req)
	if err != nil {
		return 0, "", err
	}
	for _, line := range r.other {
		fmt.Fprintln(log, line)
	}
	switch r.word {
	case "ok":
		size, _ := strconv.ParseInt(strings.TrimSpace(r.detail), 10, 64)
		return size, fmt.Sprintf(" to %s (uploaded by the instance)", s.Store.Describe()), nil
	case "empty":
		return 0, "", errNothingToSave
	case "too-big":
		return 0, "", s.tooBig(r.detail)
	case "pack-failed":
		return 0, "", errors.New("packing the cache failed")
	case "status":
		code, body, _ := strings.Cut(r.detail, " ")
		return 0, "", s.refusal("upload", object, code, body)
	}
	fmt.Fprintf(log, "The job's environment %s; the runner host relays cache %q\n", relayReason(r, "curl"), key)
	size, err := s.relayUpload(ctx, env, spec, req, object, log)
	if err != nil {
		return 0, "", err
	}
	return size, fmt.Sprintf(" to %s (relayed by the runner host)", s.Store.Describe()), nil
}

func (s *SharedCache) tooBig(size string) error {
	return fmt.Errorf("the archive (%s) is larger than MaxUploadedArchiveSize (%s): not uploaded", sizeWord(size), byteSize(s.MaxArchiveSize))
}

// relayUpload packs spec in the job's environment into a file on the runner host and
// PUTs it (the signed PUT needs its length up front).
func (s *SharedCache) relayUpload(ctx context.Context, env Env, spec PackSpec, req cachestore.Request, object string, log *Trace) (int64, error) {
	tmp, err := os.CreateTemp("", "flotilla-cache-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := env.Pack(ctx, spec, tmp, log); err != nil {
		return 0, err
	}
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, err
	}
	switch {
	case size == 0:
		return 0, errNothingToSave
	case s.MaxArchiveSize > 0 && size > s.MaxArchiveSize:
		return 0, s.tooBig(strconv.FormatInt(size, 10))
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	hreq, err := http.NewRequestWithContext(ctx, req.Method, req.URL, tmp)
	if err != nil {
		return 0, fmt.Errorf("upload %s: %w", cachestore.Redact(req.URL), err)
	}
	hreq.Header = req.Header.Clone()
	hreq.ContentLength = size
	resp, err := s.client().Do(hreq)
	if err != nil {
		return 0, fmt.Errorf("upload %s: %w", object, redactErr(err, req.URL))
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return 0, s.refusal("upload", object, strconv.Itoa(resp.StatusCode), string(body))
	}
	return size, nil
}

// redactErr keeps the signed URL out of an HTTP client error.
func redactErr(err error, url string) error {
	return errors.New(strings.ReplaceAll(err.Error(), url, cachestore.Redact(url)))
}
