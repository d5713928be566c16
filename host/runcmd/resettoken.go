package runcmd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/host/config"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
)

// ResetTokenOptions select the entries whose token `runner reset-token` replaces.
type ResetTokenOptions struct {
	ConfigPath string
	// Name selects one entry by name; URL and ID select one by GitLab URL and runner
	// ID; All selects every entry.
	Name, URL string
	ID        int64
	All       bool
	// PAT is a personal access token: with it the reset goes by runner ID, which works
	// when the entry's token has expired.
	PAT  string
	HTTP *http.Client
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// ResetTokenResult is one entry whose token was replaced.
type ResetTokenResult struct {
	Name      string
	ExpiresAt time.Time
}

// ResetToken asks GitLab for a new authentication token for each selected entry and
// writes it into the config file in place of the old one (the rest of the file is kept
// as it is). GitLab invalidates the old token at once, so each new token is written
// before the next entry is reset, and an error says the new token if it could not be
// written.
func ResetToken(ctx context.Context, o ResetTokenOptions) ([]ResetTokenResult, error) {
	now := time.Now
	if o.Now != nil {
		now = o.Now
	}
	selectors := 0
	for _, b := range []bool{o.All, o.Name != "", o.URL != "" || o.ID != 0} {
		if b {
			selectors++
		}
	}
	switch {
	case selectors != 1:
		return nil, errors.New("reset-token: give one of --name, --url with --id, or --all-runners")
	case (o.URL != "") != (o.ID != 0):
		return nil, errors.New("reset-token: --url and --id go together")
	}
	cfg, _, err := config.Load(o.ConfigPath)
	if err != nil {
		return nil, err
	}
	// The file must be writable before GitLab is asked: a new token that cannot be
	// saved leaves the entry with a token GitLab no longer accepts.
	if f, err := os.CreateTemp(filepath.Dir(o.ConfigPath), ".config.toml.*"); err != nil {
		return nil, fmt.Errorf("reset-token: %s cannot be rewritten, so no token was reset: %w", o.ConfigPath, err)
	} else {
		f.Close()
		os.Remove(f.Name())
	}
	var out []ResetTokenResult
	var errs []error
	matched := 0
	for _, r := range cfg.Runners {
		switch {
		case o.All:
		case o.Name != "" && r.Name == o.Name:
		case o.URL != "" && strings.TrimRight(r.URL, "/") == strings.TrimRight(o.URL, "/") && r.ID == o.ID:
		default:
			continue
		}
		matched++
		c, err := gitlab.NewClient(r.URL, gitlab.ClientOptions{CAFile: r.TLSCAFile, HTTP: o.HTTP})
		if err != nil {
			errs = append(errs, fmt.Errorf("reset-token: runner %q: %w", r.Name, err))
			continue
		}
		var reg gitlab.RegisteredRunner
		if o.PAT != "" {
			if r.ID == 0 {
				errs = append(errs, fmt.Errorf("reset-token: runner %q has no id in %s, which --pat needs; reset it without --pat", r.Name, o.ConfigPath))
				continue
			}
			reg, err = c.ResetTokenByID(ctx, r.ID, o.PAT)
		} else {
			reg, err = c.ResetToken(ctx, r.Token)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("runner %q: %w (its entry was kept)", r.Name, err))
			continue
		}
		if err := replaceToken(o.ConfigPath, r.URL, r.Token, reg, now()); err != nil {
			errs = append(errs, fmt.Errorf("runner %q: GitLab gave the new token %s but it could not be written; put it in %s by hand: %w",
				r.Name, reg.Token, o.ConfigPath, err))
			continue
		}
		out = append(out, ResetTokenResult{Name: r.Name, ExpiresAt: reg.TokenExpiresAt})
	}
	if matched == 0 {
		return nil, fmt.Errorf("reset-token: no matching runner in %s", o.ConfigPath)
	}
	return out, errors.Join(errs...)
}

var tokenKeyLine = regexp.MustCompile(`^(\s*)(token|token_obtained_at|token_expires_at)(\s*=\s*)`)

// replaceToken rewrites the token lines of the entry (url, old token) with reg's.
func replaceToken(path, url, old string, reg gitlab.RegisteredRunner, now time.Time) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	blocks, err := findRunnerBlocks(path, data)
	if err != nil {
		return err
	}
	lines := splitLines(data)
	for _, b := range blocks {
		if b.URL != url || b.Token != old {
			continue
		}
		values := map[string]string{"token": q(reg.Token), "token_obtained_at": now.UTC().Format(time.RFC3339),
			"token_expires_at": reg.TokenExpiresAt.UTC().Format(time.RFC3339)}
		inTop := true
		for i := b.start; i < b.end; i++ {
			trim := strings.TrimSpace(lines[i])
			if strings.HasPrefix(trim, "[") && !runnersHeader.MatchString(trim) {
				inTop = false
			}
			m := tokenKeyLine.FindStringSubmatch(lines[i])
			if !inTop || m == nil {
				continue
			}
			lines[i] = m[1] + m[2] + m[3] + values[m[2]] + "\n"
		}
		var buf bytes.Buffer
		for _, l := range lines {
			buf.WriteString(l)
		}
		return writeConfig(path, buf.Bytes(), func(c *config.Config) error {
			for _, r := range c.Runners {
				if r.URL == url && r.Token == reg.Token {
					return nil
				}
			}
			return errors.New("the new token is not in the entry")
		})
	}
	return fmt.Errorf("the entry is no longer in %s", path)
}
