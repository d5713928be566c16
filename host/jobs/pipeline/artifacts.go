package pipeline

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// ReportTypes are GitLab's artifacts:reports types. Another name earns a warning (a
// newer GitLab may know it) and is collected all the same.
var ReportTypes = []string{"accessibility", "annotations", "api_fuzzing", "browser_performance", "cluster_image_scanning",
	"codequality", "container_scanning", "coverage_fuzzing", "coverage_report", "cyclonedx", "dast", "dependency_scanning",
	"dotenv", "junit", "license_scanning", "load_performance", "metrics", "performance", "repository_xray", "requirements",
	"requirements_v2", "sast", "secret_detection", "terraform"}

var artifactKeys = []string{"paths", "exclude", "untracked", "when", "expire_in", "name", "reports", "public", "access", "expose_as"}

// parseArtifacts reads a job's artifacts: the archive (paths, exclude, untracked) and
// each report, one jobs.Artifact each, sharing when and expire_in as GitLab's payload
// does. name, public, access and expose_as are checked and accepted: they only say
// how GitLab shows the artifacts.
func parseArtifacts(d *diags, n node, path string) []jobs.Artifact {
	m := mapping(d, n, path)
	if m == nil {
		return nil
	}
	archive := jobs.Artifact{Type: jobs.ArtifactArchive, When: WhenOnSuccess}
	var reports []jobs.Artifact
	for _, f := range d.pairs(m) {
		fp := path + "." + f.key.Value
		switch f.key.Value {
		case "paths":
			archive.Paths = script(d, f.value, fp)
			for i, p := range archive.Paths {
				checkArtifactPath(d, f.value, fmt.Sprintf("%s[%d]", fp, i), p)
			}
		case "exclude":
			archive.Exclude = script(d, f.value, fp)
			for i, p := range archive.Exclude {
				if err := jobs.ValidExclude(p); err != nil {
					d.errorHint(f.value, fmt.Sprintf("%s[%d]", fp, i), "use globs such as out/**/*.o", "%v", err)
				}
			}
		case "untracked":
			archive.Untracked = boolean(d, f.value, fp)
		case "when":
			switch w := scalar(d, f.value, fp); w {
			case WhenOnSuccess, WhenOnFailure, WhenAlways:
				archive.When = w
			default:
				d.errorHint(f.value, fp, "use on_success, on_failure or always", "unknown artifacts when %q", w)
			}
		case "expire_in":
			archive.ExpireIn = scalar(d, f.value, fp)
			if _, err := ParseExpireIn(archive.ExpireIn); err != nil {
				d.errorHint(f.value, fp, `use GitLab's duration words: "30 mins", "1 week", "3 mos 2 days" or never`, "%v", err)
			}
		case "name":
			archive.Name = scalar(d, f.value, fp)
		case "public":
			boolean(d, f.value, fp)
		case "access":
			switch a := scalar(d, f.value, fp); a {
			case "all", "developer", "maintainer", "none":
			default:
				d.errorHint(f.value, fp, "use all, developer, maintainer or none", "unknown artifacts access %q", a)
			}
		case "expose_as":
			scalar(d, f.value, fp)
		case "reports":
			reports = parseReports(d, f.value, fp)
		default:
			d.errorHint(f.key, fp, suggestOr(f.key.Value, artifactKeys), "unknown artifacts keyword %q", f.key.Value)
		}
	}
	var out []jobs.Artifact
	if len(archive.Paths) > 0 || archive.Untracked {
		out = append(out, archive)
	} else if len(archive.Exclude) > 0 {
		d.warnf(n, path+".exclude", "exclude without paths or untracked collects nothing")
	}
	for _, r := range reports {
		// Reports are uploaded whatever the outcome of the job (GitLab's runner
		// collects them with when: always); the expiry is the artifacts'.
		r.When, r.ExpireIn = WhenAlways, archive.ExpireIn
		out = append(out, r)
	}
	return out
}

// parseReports reads artifacts:reports: each type a path or a list of paths
// (coverage_report: {coverage_format, path}).
func parseReports(d *diags, n node, path string) []jobs.Artifact {
	m := mapping(d, n, path)
	if m == nil {
		return nil
	}
	var out []jobs.Artifact
	for _, f := range d.pairs(m) {
		typ, fp := f.key.Value, path+"."+f.key.Value
		if !slices.Contains(ReportTypes, typ) {
			d.warnf(f.key, fp, "unknown report type %q; collected all the same", typ)
		}
		a := jobs.Artifact{Type: typ}
		if v := resolve(f.value); v.Kind == yaml.MappingNode {
			for _, c := range d.pairs(v) {
				switch c.key.Value {
				case "path":
					a.Paths = []string{scalar(d, c.value, fp+".path")}
				case "coverage_format":
					a.Format = scalar(d, c.value, fp+".coverage_format")
				default:
					d.errorHint(c.key, fp+"."+c.key.Value, "allowed: path, coverage_format", "unknown %s keyword %q", typ, c.key.Value)
				}
			}
		} else {
			a.Paths = script(d, f.value, fp)
		}
		for i, p := range a.Paths {
			checkArtifactPath(d, f.value, fmt.Sprintf("%s[%d]", fp, i), p)
		}
		out = append(out, a)
	}
	return out
}

func checkArtifactPath(d *diags, n node, path, p string) {
	if strings.HasPrefix(p, "/") || slices.Contains(strings.Split(p, "/"), "..") {
		d.errorHint(n, path, "artifacts must be inside the project directory", "artifact path %q leaves the project directory", p)
	}
}

func boolean(d *diags, n node, path string) bool {
	b, err := strconv.ParseBool(scalar(d, n, path))
	if err != nil {
		d.errorf(n, path, "expected true or false")
	}
	return b
}

// expireUnits are the units of GitLab's expire_in (ChronicDuration's words).
var expireUnits = map[string]time.Duration{
	"mo": 30 * 24 * time.Hour, "mos": 30 * 24 * time.Hour, "month": 30 * 24 * time.Hour, "months": 30 * 24 * time.Hour,
	"y": 365 * 24 * time.Hour, "yr": 365 * 24 * time.Hour, "yrs": 365 * 24 * time.Hour, "year": 365 * 24 * time.Hour, "years": 365 * 24 * time.Hour,
}

// ParseExpireIn reads artifacts:expire_in as GitLab does: "never" (0, no expiry), a
// number of seconds, or numbers with units ("42 mins", "3 weeks and 2 days",
// "6 mos 1 day", "1 yr"), months counted as 30 days and years as 365.
func ParseExpireIn(s string) (time.Duration, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "never" {
		return 0, nil
	}
	total, err := wordDuration(t, expireUnit)
	if err != nil {
		return 0, fmt.Errorf("expire_in %q: %w", s, err)
	}
	if total <= 0 {
		return 0, fmt.Errorf("expire_in %q: want a positive duration or never", s)
	}
	return total, nil
}

// expireUnit is a unit of expire_in: a job timeout's, months and years, and none for
// seconds.
func expireUnit(u string) (time.Duration, bool) {
	if u == "" {
		return time.Second, true
	}
	if d, ok := expireUnits[u]; ok {
		return d, true
	}
	d, ok := durationUnits[u]
	return d, ok
}

// parseDependencies reads dependencies: a list of job names, possibly empty. Without
// a value (dependencies: alone, or ~) it is not written, as GitLab takes nil.
func parseDependencies(d *diags, j *Job, n node, path string) {
	if v := resolve(n); v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
		j.ArtifactsFrom, j.depAt = nil, nil
		return
	}
	j.ArtifactsFrom, j.depAt = []string{}, nil
	for i, it := range seq(d, n, path) {
		j.ArtifactsFrom = append(j.ArtifactsFrom, scalar(d, it, fmt.Sprintf("%s[%d]", path, i)))
		j.depAt = append(j.depAt, resolve(it))
	}
}

// checkDependencies expands dependencies on parallel jobs into the jobs they made and
// checks every dependency as GitLab does: the job exists, is of an earlier stage, and
// is one of the job's needs when it has needs.
func checkDependencies(d *diags, p *Pipeline) {
	groups := map[string][]string{}
	stageIndex := map[string]int{}
	for i, s := range p.Stages {
		stageIndex[s] = i
	}
	byName := map[string]*Job{}
	var names []string
	for _, j := range p.Jobs {
		if j.Origin != "" {
			groups[j.Origin] = append(groups[j.Origin], j.Name)
		}
		byName[j.Name] = j
		names = append(names, j.Name)
	}
	expand := func(list []string, at []node) ([]string, []node) {
		if list == nil {
			return nil, nil
		}
		out, outAt := []string{}, []node{}
		for i, n := range list {
			for _, x := range append([]string(nil), groupOr(groups, n)...) {
				out, outAt = append(out, x), append(outAt, nodeAt(at, i))
			}
		}
		return out, outAt
	}
	for _, j := range p.Jobs {
		j.NoArtifactsFrom, _ = expand(j.NoArtifactsFrom, nil)
		j.ArtifactsFrom, j.depAt = expand(j.ArtifactsFrom, j.depAt)
		for i, dep := range j.ArtifactsFrom {
			at, path := nodeAt(j.depAt, i), fmt.Sprintf("%s.dependencies[%d]", j.Name, i)
			dj := byName[dep]
			switch {
			case dj == nil && d.refused[dep]:
				// The job is refused with an error of its own.
			case dj == nil:
				d.errorHint(at, path, suggestOr(dep, names), "job %q depends on the undefined job %q", j.Name, dep)
			case j.Needs != nil && !slices.Contains(j.Needs, dep):
				d.errorHint(at, path, fmt.Sprintf("add %q to needs, or remove it from dependencies", dep),
					"job %q: the dependency %q should be part of needs (GitLab rejects this)", j.Name, dep)
			case j.Needs == nil && stageIndex[dj.Stage] >= stageIndex[j.Stage]:
				d.errorHint(at, path, fmt.Sprintf("move %q to a stage before %s", dep, j.Stage),
					"job %q (stage %s) depends on %q of stage %s: a dependency must be of an earlier stage (GitLab: not defined in current or prior stages)",
					j.Name, j.Stage, dep, dj.Stage)
			}
		}
	}
}

func groupOr(groups map[string][]string, name string) []string {
	if g, ok := groups[name]; ok {
		return g
	}
	return []string{name}
}

// ArtifactSources returns the jobs whose artifacts j gets before its script, as
// GitLab decides: its dependencies: when given ([] for none); else the jobs it waits
// for (its needs, or every job of the earlier stages), less the needs written with
// artifacts: false.
func (pl *Plan) ArtifactSources(j *Job) []string {
	if j.ArtifactsFrom != nil {
		return j.ArtifactsFrom
	}
	var out []string
	for _, dep := range pl.Deps[j.Name] {
		if !slices.Contains(j.NoArtifactsFrom, dep) {
			out = append(out, dep)
		}
	}
	return out
}
