// Package gitsource builds the "get sources" step of a GitLab job: the POSIX shell
// script that puts the job's repository in its project directory, following the Git
// variables GitLab Runner documents (GIT_STRATEGY, GIT_DEPTH, GIT_CHECKOUT,
// GIT_CLEAN_FLAGS, GIT_FETCH_EXTRA_FLAGS, GIT_SUBMODULE_*, GIT_LFS_SKIP_SMUDGE) and the
// runner's pre_get_sources_script and post_get_sources_script. Both executors use it:
// the instance executor runs the script on the instance, docker-autoscaler on the
// runner host before the tree is copied into the job's volume (it runs the config
// scripts itself, in the job's image).
package gitsource

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// The Git strategies.
const (
	// StrategyClone starts from an empty project directory.
	StrategyClone = "clone"
	// StrategyFetch reuses the checkout a previous job left in the project directory.
	StrategyFetch = "fetch"
	// StrategyNone leaves the project directory as it is: no Git at all.
	StrategyNone = "none"
	// StrategyEmpty gives the job an empty project directory.
	StrategyEmpty = "empty"
)

// The submodule strategies.
const (
	SubmodulesNone      = "none"
	SubmodulesNormal    = "normal"
	SubmodulesRecursive = "recursive"
)

// defaultCleanFlags and defaultFetchFlags are GitLab Runner's documented defaults.
var (
	defaultCleanFlags = []string{"-ffdx"}
	defaultFetchFlags = []string{"--prune", "--quiet"}
)

// Plan is how one job gets its sources, decided from its variables and its Git info.
type Plan struct {
	Strategy string
	// Depth is the fetch depth; 0 fetches the whole history.
	Depth    int
	Refspecs []string
	// Checkout is false when GIT_CHECKOUT=false: the commit is fetched, not checked out.
	Checkout bool
	// CleanFlags are passed to `git clean` after the checkout; empty means no clean.
	CleanFlags []string
	FetchFlags []string
	// Submodules is none, normal or recursive.
	Submodules           string
	SubmodulePaths       []string
	SubmoduleDepth       int
	SubmoduleUpdateFlags []string
	// LFSSkipSmudge passes GIT_LFS_SKIP_SMUDGE=1 to Git.
	LFSSkipSmudge bool
}

// PlanFor reads the job's Git variables (their values expanded as the job's other
// variables are). A value GitLab would not accept is an error naming the variable.
func PlanFor(job *jobs.Job) (Plan, error) {
	vars := job.Variables.Expanded()
	get := func(k string) string { v, _ := vars.Get(k); return strings.TrimSpace(v) }
	p := Plan{Strategy: get("GIT_STRATEGY"), Depth: job.Source.Depth, Refspecs: job.Source.Refspecs, Checkout: true,
		Submodules: get("GIT_SUBMODULE_STRATEGY")}
	switch p.Strategy {
	case "":
		// Unset: the project's setting, which GitLab sends as allow_git_fetch.
		p.Strategy = StrategyClone
		if job.Source.AllowFetch {
			p.Strategy = StrategyFetch
		}
	case StrategyClone, StrategyFetch, StrategyNone, StrategyEmpty:
	default:
		return Plan{}, fmt.Errorf("variable GIT_STRATEGY=%q: want clone, fetch, none or empty", p.Strategy)
	}
	var err error
	if p.Depth, err = intVar(get, "GIT_DEPTH", p.Depth); err != nil {
		return Plan{}, err
	}
	if p.SubmoduleDepth, err = intVar(get, "GIT_SUBMODULE_DEPTH", 0); err != nil {
		return Plan{}, err
	}
	if v := get("GIT_CHECKOUT"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return Plan{}, fmt.Errorf("variable GIT_CHECKOUT=%q: want true or false", v)
		}
		p.Checkout = b
	}
	p.CleanFlags = flags(get("GIT_CLEAN_FLAGS"), defaultCleanFlags)
	p.FetchFlags = flags(get("GIT_FETCH_EXTRA_FLAGS"), defaultFetchFlags)
	p.SubmoduleUpdateFlags = flags(get("GIT_SUBMODULE_UPDATE_FLAGS"), nil)
	p.SubmodulePaths = flags(get("GIT_SUBMODULE_PATHS"), nil)
	switch p.Submodules {
	case "":
		p.Submodules = SubmodulesNone
	case SubmodulesNone, SubmodulesNormal, SubmodulesRecursive:
	default:
		return Plan{}, fmt.Errorf("variable GIT_SUBMODULE_STRATEGY=%q: want none, normal or recursive", p.Submodules)
	}
	if v := get("GIT_LFS_SKIP_SMUDGE"); v != "" {
		p.LFSSkipSmudge, _ = strconv.ParseBool(v)
		p.LFSSkipSmudge = p.LFSSkipSmudge || v == "1"
	}
	return p, nil
}

func intVar(get func(string) string, key string, def int) (int, error) {
	v := get(key)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("variable %s=%q: want a whole number of commits (0 for the whole history)", key, v)
	}
	return n, nil
}

// flags splits a flags variable on white space: unset or empty keeps def, "none" is
// no flags at all, as GitLab Runner documents for GIT_CLEAN_FLAGS and
// GIT_FETCH_EXTRA_FLAGS.
func flags(v string, def []string) []string {
	switch v {
	case "":
		return def
	case "none":
		return nil
	}
	if f := strings.Fields(v); len(f) > 0 {
		return f
	}
	return def
}

// DebugTrace reports whether the job asks for CI_DEBUG_TRACE: its script then runs with
// `set -x`.
func DebugTrace(job *jobs.Job) bool {
	v, _ := job.Variables.Expanded().Get("CI_DEBUG_TRACE")
	b, _ := strconv.ParseBool(strings.TrimSpace(v))
	return b
}

// DebugTraceWarning is the log line of a job that runs with CI_DEBUG_TRACE.
const DebugTraceWarning = "WARNING: CI_DEBUG_TRACE is enabled: every command of the job script is printed with its arguments expanded, which can reveal secrets (masking still applies)"

// Options say where and how the script runs.
type Options struct {
	// Dir is the project directory.
	Dir string
	// PreGetSources and PostGetSources are config.toml's pre_get_sources_script and
	// post_get_sources_script: shell text run before and after Git, in Dir.
	PreGetSources  string
	PostGetSources string
	// Variables are exported first (file variables excepted: the job script writes
	// those). Nil on the runner host, where a job's variables must not steer the
	// host's programs.
	Variables jobs.Variables
}

// Script renders the plan as one POSIX shell script for the job: it creates the
// project directory as the strategy asks, runs the config scripts, and fetches and
// checks out the commit. Every value is single-quoted; the job token travels in an
// HTTP header scoped to the repository's server, set through Git's environment, so it
// is written neither to argv, to .git/config, nor to the log.
func (p Plan) Script(src jobs.Source, o Options) string {
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	say := func(format string, args ...any) { line("printf '%%s\\n' %s", quote(fmt.Sprintf(format, args...))) }
	line("set -e")
	for _, v := range o.Variables.Effective() {
		if !v.File && validName(v.Key) {
			line("export %s=%s", v.Key, quote(v.Value))
		}
	}
	dir := quote(o.Dir)
	switch p.Strategy {
	case StrategyClone, StrategyEmpty:
		line("rm -rf %s", dir)
	}
	line("mkdir -p %s", dir)
	line("cd %s", dir)
	if o.PreGetSources != "" {
		say("Running pre_get_sources_script")
		line("%s", o.PreGetSources)
		line("cd %s", dir)
	}
	switch p.Strategy {
	case StrategyNone:
		say("Skipping Git repository setup (GIT_STRATEGY=none): the project directory is used as it is")
	case StrategyEmpty:
		say("Skipping Git repository setup and creating an empty build directory (GIT_STRATEGY=empty)")
	default:
		p.fetch(&b, src, line, say)
	}
	if o.PostGetSources != "" {
		say("Running post_get_sources_script")
		line("%s", o.PostGetSources)
	}
	return b.String()
}

func (p Plan) fetch(b *strings.Builder, src jobs.Source, line func(string, ...any), say func(string, ...any)) {
	line("export GIT_TERMINAL_PROMPT=0")
	if p.LFSSkipSmudge {
		line("export GIT_LFS_SKIP_SMUDGE=1")
	}
	if src.Token != "" {
		if u, err := url.Parse(src.RepoURL); err == nil && u.Host != "" {
			// http.<url>.extraHeader applies to this server only: submodules on other
			// hosts never see the token.
			auth := base64.StdEncoding.EncodeToString([]byte("gitlab-ci-token:" + src.Token))
			line("export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=%s GIT_CONFIG_VALUE_0=%s",
				quote("http."+u.Scheme+"://"+u.Host+"/.extraHeader"), quote("Authorization: Basic "+auth))
		}
	}
	if p.Depth > 0 {
		say("Fetching changes with git depth set to %d...", p.Depth)
	} else {
		say("Fetching changes...")
	}
	// A fresh directory (clone, or fetch without an earlier checkout) is initialised;
	// an existing checkout is reused, with stale lock files of an interrupted job gone.
	line(`if [ -d .git ]; then printf '%%s\n' "Reusing the existing Git repository in $PWD"; rm -f .git/index.lock .git/shallow.lock .git/HEAD.lock; else printf '%%s\n' 'Created fresh repository.'; fi`)
	line("git init -q")
	line("git remote set-url origin %[1]s 2>/dev/null || git remote add origin %[1]s", quote(src.RepoURL))
	fetch := []string{"git", "fetch", "origin"}
	for _, r := range p.refspecs(src) {
		fetch = append(fetch, quote(r))
	}
	if p.Depth > 0 {
		fetch = append(fetch, "--depth", strconv.Itoa(p.Depth))
	} else {
		// The whole history asked for: a shallow checkout an earlier job left is
		// deepened, not kept shallow.
		line("unshallow=; if [ -f .git/shallow ]; then unshallow=--unshallow; fi")
		fetch = append(fetch, "$unshallow")
	}
	fetch = append(fetch, quoteAll(p.FetchFlags)...)
	line("%s", strings.Join(fetch, " "))
	if !p.Checkout {
		say("Skipping Git checkout")
		say("Skipping Git submodules setup")
		return
	}
	target := src.SHA
	if target == "" {
		target = "FETCH_HEAD"
	}
	say("Checking out %s as detached HEAD (ref is %s)...", target[:min(8, len(target))], src.Ref)
	line("git -c advice.detachedHead=false checkout -f -q %s", quote(target))
	if len(p.CleanFlags) > 0 {
		line("git clean %s", strings.Join(quoteAll(p.CleanFlags), " "))
	}
	p.submodules(line, say)
}

// refspecs are the payload's; a payload without any fetches the ref it names (all
// branches and tags when it names none).
func (p Plan) refspecs(src jobs.Source) []string {
	if len(p.Refspecs) > 0 {
		return p.Refspecs
	}
	if src.Ref != "" {
		return []string{"+refs/heads/" + src.Ref + ":refs/remotes/origin/" + src.Ref}
	}
	return []string{"+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"}
}

func (p Plan) submodules(line func(string, ...any), say func(string, ...any)) {
	if p.Submodules == SubmodulesNone {
		say("Skipping Git submodules setup")
		return
	}
	rec := ""
	if p.Submodules == SubmodulesRecursive {
		rec = " --recursive"
		say("Updating/initializing submodules recursively...")
	} else {
		say("Updating/initializing submodules...")
	}
	paths := ""
	if len(p.SubmodulePaths) > 0 {
		paths = " -- " + strings.Join(quoteAll(p.SubmodulePaths), " ")
	}
	line("git submodule init%s", paths)
	line("git submodule sync%s%s", rec, paths)
	update := "git submodule update --init" + rec
	if p.SubmoduleDepth > 0 {
		update += " --depth " + strconv.Itoa(p.SubmoduleDepth)
	}
	if len(p.SubmoduleUpdateFlags) > 0 {
		update += " " + strings.Join(quoteAll(p.SubmoduleUpdateFlags), " ")
	}
	line("%s%s", update, paths)
	if len(p.CleanFlags) > 0 {
		line("git submodule foreach%s %s", rec, quote("git clean "+strings.Join(quoteAll(p.CleanFlags), " ")))
	}
}

// validName reports whether k can be exported by a POSIX shell.
func validName(k string) bool {
	for i, c := range k {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return k != ""
}

// quote makes s one single-quoted shell word.
func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = quote(s)
	}
	return out
}

// gitOnly are the variables that only steer a Git checkout, in the order GitLab's
// documentation lists them.
var gitOnly = []string{"GIT_DEPTH", "GIT_CHECKOUT", "GIT_CLEAN_FLAGS", "GIT_FETCH_EXTRA_FLAGS",
	"GIT_SUBMODULE_STRATEGY", "GIT_SUBMODULE_PATHS", "GIT_SUBMODULE_DEPTH", "GIT_SUBMODULE_UPDATE_FLAGS", "GIT_LFS_SKIP_SMUDGE"}

// GitOnlyVariables names the variables job sets that mean something only when its
// sources come from Git (GIT_DEPTH, GIT_SUBMODULE_*, …, and GIT_STRATEGY clone or
// fetch), for a job that gets a copy of a working tree instead. GIT_STRATEGY none and
// empty are not among them: they apply to a copy too.
func GitOnlyVariables(job *jobs.Job) []string {
	vars := job.Variables.Expanded()
	var set []string
	if v, _ := vars.Get("GIT_STRATEGY"); strings.TrimSpace(v) == StrategyClone || strings.TrimSpace(v) == StrategyFetch {
		set = append(set, "GIT_STRATEGY="+strings.TrimSpace(v))
	}
	for _, k := range gitOnly {
		if v, ok := vars.Get(k); ok && strings.TrimSpace(v) != "" {
			set = append(set, k)
		}
	}
	return set
}
