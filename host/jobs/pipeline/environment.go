package pipeline

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/big"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// Environment is a job's environment:. runner exec has no deployments: the job gets
// GitLab's CI_ENVIRONMENT_* variables and nothing else changes.
type Environment struct {
	// Name and URL are as written; Evaluate expands their variables.
	Name, URL string
	// Action is start (the default), prepare, stop, verify or access.
	Action string
	// Tier is deployment_tier, "" when not given (GitLab guesses it from the name).
	Tier       string
	OnStop     string
	AutoStopIn string
	// Line is where it is written, for messages.
	Line     int
	onStopAt node
}

var (
	environmentActions = []string{"start", "prepare", "stop", "verify", "access"}
	environmentTiers   = []string{"production", "staging", "testing", "development", "other"}
	// environmentName is what GitLab allows in an environment's name.
	environmentName = regexp.MustCompile(`^[a-zA-Z0-9_\\/${}. -]+$`)
)

// parseEnvironment reads environment: a name, or a mapping of name, url, action,
// deployment_tier, on_stop, auto_stop_in and kubernetes.
func parseEnvironment(d *diags, n node, path string) *Environment {
	v := resolve(n)
	e := &Environment{Action: "start", Line: v.Line}
	if v.Kind == yaml.ScalarNode {
		e.Name = scalar(d, v, path)
		checkEnvironmentName(d, v, path, e.Name)
		return e
	}
	m := mapping(d, v, path)
	if m == nil {
		return nil
	}
	var nameAt node
	for _, kv := range d.pairs(m) {
		p := path + "." + kv.key.Value
		switch kv.key.Value {
		case "name":
			e.Name, nameAt = scalar(d, kv.value, p), resolve(kv.value)
			checkEnvironmentName(d, nameAt, p, e.Name)
		case "url":
			e.URL = scalar(d, kv.value, p)
		case "action":
			e.Action = scalar(d, kv.value, p)
			if !slices.Contains(environmentActions, e.Action) {
				d.errorHint(kv.value, p, suggestOr(e.Action, environmentActions), "unknown environment action %q", e.Action)
			}
		case "deployment_tier":
			e.Tier = scalar(d, kv.value, p)
			if !slices.Contains(environmentTiers, e.Tier) {
				d.errorHint(kv.value, p, suggestOr(e.Tier, environmentTiers), "unknown deployment tier %q", e.Tier)
			}
		case "on_stop":
			e.OnStop, e.onStopAt = scalar(d, kv.value, p), resolve(kv.value)
		case "auto_stop_in":
			e.AutoStopIn = scalar(d, kv.value, p)
		case "kubernetes":
			// Where GitLab deploys; runner exec has no cluster, and the job's script
			// does the deploying anyway.
			mapping(d, kv.value, p)
		default:
			d.errorHint(kv.key, p, suggestOr(kv.key.Value, []string{"name", "url", "action", "deployment_tier", "on_stop", "auto_stop_in", "kubernetes"}), "unknown environment keyword %q", kv.key.Value)
		}
	}
	if nameAt == nil {
		d.errorHint(v, path+".name", "name the environment, e.g. name: review/$CI_COMMIT_REF_SLUG", "an environment needs a name")
	}
	return e
}

func checkEnvironmentName(d *diags, at node, path, name string) {
	if name != "" && (!environmentName.MatchString(name) || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/")) {
		d.errorHint(at, path, "use letters, digits, spaces and - _ / $ { } . (not starting or ending with /)", "invalid environment name %q", name)
	}
}

// checkEnvironments checks every on_stop names a job whose environment stops, as
// GitLab does.
func checkEnvironments(d *diags, p *Pipeline) {
	names := make([]string, len(p.Jobs))
	for i, j := range p.Jobs {
		names[i] = j.Name
	}
	for _, j := range p.Jobs {
		e := j.Environment
		if e == nil || e.OnStop == "" {
			continue
		}
		path := j.Name + ".environment.on_stop"
		switch stop := p.Job(e.OnStop); {
		case stop == nil:
			d.errorHint(e.onStopAt, path, suggestOr(e.OnStop, names), "on_stop job %q is not defined", e.OnStop)
		case stop.Environment == nil || stop.Environment.Action != "stop":
			d.errorHint(e.onStopAt, path, "give "+e.OnStop+" environment: {name: …, action: stop}", "on_stop job %q does not have environment:action: stop", e.OnStop)
		}
	}
}

// environmentVariables are the CI_ENVIRONMENT_* variables of a job with e, its name
// and URL expanded with lookup as GitLab expands them.
func environmentVariables(e *Environment, lookup func(string) (string, bool)) jobs.Variables {
	name := expandVars(e.Name, lookup)
	tier := e.Tier
	if tier == "" {
		tier = guessTier(name)
	}
	vs := jobs.Variables{
		{Key: "CI_ENVIRONMENT_NAME", Value: name},
		{Key: "CI_ENVIRONMENT_SLUG", Value: EnvironmentSlug(name)},
		{Key: "CI_ENVIRONMENT_ACTION", Value: e.Action},
		{Key: "CI_ENVIRONMENT_TIER", Value: tier},
	}
	if e.URL != "" {
		vs = append(vs, jobs.Variable{Key: "CI_ENVIRONMENT_URL", Value: expandVars(e.URL, lookup)})
	}
	return vs
}

var (
	slugNonAlnum = regexp.MustCompile(`[^a-z0-9]`)
	slugDashes   = regexp.MustCompile(`-+`)
)

// EnvironmentSlug is GitLab's CI_ENVIRONMENT_SLUG of an environment name: lowercase
// letters, digits and "-", starting with a letter, at most 24 characters; a slug
// that had to change the name ends with a suffix made from the name's SHA-256, so
// that different names keep different slugs.
func EnvironmentSlug(name string) string {
	s := slugNonAlnum.ReplaceAllString(strings.ToLower(name), "-")
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		s = "env-" + s
	}
	s = slugDashes.ReplaceAllString(s, "-")
	if len(s) <= 24 && s == name {
		return strings.TrimSuffix(s, "-")
	}
	s = s[:min(len(s), 17)]
	if !strings.HasSuffix(s, "-") {
		s += "-"
	}
	sum := sha256.Sum256([]byte(name))
	n, _ := new(big.Int).SetString(hex.EncodeToString(sum[:]), 16)
	b36 := n.Text(36)
	return s + b36[max(0, len(b36)-6):]
}

var tierGuesses = []struct {
	re   *regexp.Regexp
	tier string
}{
	{regexp.MustCompile(`(?i)(dev|review|trunk)`), "development"},
	{regexp.MustCompile(`(?i)(test|tst|int|ac(ce|)pt|qa|qc|control|quality)`), "testing"},
	{regexp.MustCompile(`(?i)(st(a|)g|mod(e|)l|pre|demo|non)`), "staging"},
	{regexp.MustCompile(`(?i)(pr(o|)d|live)`), "production"},
}

// guessTier is GitLab's deployment tier for an environment that does not give one.
func guessTier(name string) string {
	for _, g := range tierGuesses {
		if g.re.MatchString(name) {
			return g.tier
		}
	}
	return "other"
}

// Release is a job's release:. runner exec creates no release.
type Release struct {
	TagName, Name string
}

// parseRelease reads release: a mapping with tag_name and description.
func parseRelease(d *diags, n node, path string) *Release {
	m := mapping(d, n, path)
	if m == nil {
		return nil
	}
	r := &Release{}
	hasDescription := false
	for _, kv := range d.pairs(m) {
		p := path + "." + kv.key.Value
		switch kv.key.Value {
		case "tag_name":
			r.TagName = scalar(d, kv.value, p)
		case "name":
			r.Name = scalar(d, kv.value, p)
		case "description":
			scalar(d, kv.value, p)
			hasDescription = true
		case "tag_message", "ref", "released_at":
			scalar(d, kv.value, p)
		case "milestones":
			script(d, kv.value, p)
		case "assets":
			mapping(d, kv.value, p)
		default:
			d.errorHint(kv.key, p, suggestOr(kv.key.Value, []string{"tag_name", "tag_message", "name", "description", "ref", "milestones", "released_at", "assets"}), "unknown release keyword %q", kv.key.Value)
		}
	}
	if r.TagName == "" {
		d.errorHint(m, path+".tag_name", "give the release's tag, e.g. tag_name: $CI_COMMIT_TAG", "a release needs tag_name")
	}
	if !hasDescription {
		d.errorHint(m, path+".description", "describe the release (text, or a file path)", "a release needs description")
	}
	return r
}

// DefaultPagesPublish is the directory a pages job publishes without pages:publish.
const DefaultPagesPublish = "public"

// parsePages reads pages: true, false or {publish, path_prefix, expire_in}; it
// returns the directory published, "" for pages: false.
func parsePages(d *diags, n node, path string) string {
	v := resolve(n)
	if v.Kind == yaml.ScalarNode {
		switch scalar(d, v, path) {
		case "true":
			return DefaultPagesPublish
		case "false":
			return ""
		}
		d.errorHint(v, path, "write true, false or a mapping with publish:", "expected true, false or a mapping")
		return ""
	}
	m := mapping(d, v, path)
	if m == nil {
		return ""
	}
	publish := DefaultPagesPublish
	for _, kv := range d.pairs(m) {
		p := path + "." + kv.key.Value
		switch kv.key.Value {
		case "publish":
			publish = scalar(d, kv.value, p)
		case "path_prefix", "expire_in":
			scalar(d, kv.value, p)
		default:
			d.errorHint(kv.key, p, "allowed: publish, path_prefix, expire_in", "unknown pages keyword %q", kv.key.Value)
		}
	}
	return publish
}

// pagesArtifact makes sure a pages job's publish directory is in its artifacts, as
// GitLab adds it.
func pagesArtifact(j *Job) {
	for i, a := range j.Artifacts {
		if a.IsReport() {
			continue
		}
		if !slices.Contains(a.Paths, j.Pages) {
			j.Artifacts[i].Paths = append(slices.Clone(a.Paths), j.Pages)
		}
		return
	}
	j.Artifacts = append(j.Artifacts, jobs.Artifact{Paths: []string{j.Pages}, When: WhenOnSuccess})
}

// describePages is the note a pages job earns.
func describePages(publish string) string {
	return fmt.Sprintf("pages are not deployed by runner exec; the published directory %s is kept as the job's artifact", publish)
}
