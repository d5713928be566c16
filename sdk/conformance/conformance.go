// Package conformance is the test kit every provider plugin runs to prove it keeps the
// contract of proto/fleeting/v1 and sdk/provider. Each check is a clause with a stable
// ID (L0.handshake, L1.decrease.subset, …) that the .proto's normative comments cite.
//
// Level L0 checks the wire: the handshake, `version --json`, provider info, configuration
// errors, ErrNotSupported, Shutdown, cancellation and panics. It creates no instances.
// Level L1 checks the contract against a cloud (or a fake of one): it creates instances,
// connects to them, deletes some, relaunches the plugin, and deletes everything it
// created before it returns.
//
// The kit runs a plugin in one of two modes: in process over real gRPC (Config.New), or
// as a built binary launched exactly as the host launches it (Config.Binary). Check runs
// the clauses and returns a Report, which is what `runner plugin check` prints. The
// package does not import testing, so a binary that checks plugins links no test code;
// conformancetest.Run is the thin wrapper for `go test` that makes each clause a
// subtest named by its ID.
package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// Config says which plugin to check and how.
type Config struct {
	// New returns the plugin to check in process (served over real gRPC with
	// sdk/plugin.ServeInProcess). It is called once per plugin "process" the kit starts:
	// successive values must act on the same instances (the same cloud, directory or
	// fake), as successive processes of the binary would. Set New or Binary, not both.
	New func() provider.InstanceGroup
	// Binary is the path of a built plugin, launched with sdk/pluginclient.Launch.
	Binary string
	// Args and Env are passed to the binary (Env on top of the current environment).
	Args, Env []string

	// PluginConfig is the plugin_config JSON object sent with Init. Empty means {}.
	PluginConfig json.RawMessage
	// Connector is the connector configuration sent with Init.
	Connector provider.ConnectorConfig

	// L1 enables the contract clauses, which create and delete instances. Without it
	// they are reported as skipped.
	L1 bool

	// BadConfig is a plugin_config with several problems and BadConfigWant the text
	// each problem's error must contain [L0.config.all-problems]. The default is two
	// unknown keys, which every SDK plugin must reject by name.
	BadConfig     json.RawMessage
	BadConfigWant []string

	// Timeout bounds each wait: one call, or instances reaching a state. Default 2m.
	Timeout time.Duration
	// Prompt is how soon a call must return once its context is cancelled [L0.cancel].
	// Default 2s.
	Prompt time.Duration
	// PollInterval is the pause between Updates while waiting. Default 100ms.
	PollInterval time.Duration

	// MaxSize, when not 0, is the size limit the plugin is configured with; otherwise
	// ProviderInfo.MaxSize is used [L1.max-size]. The clause is skipped when neither is
	// set or the limit is above 10 (filling a large group is too costly for a check).
	MaxSize int
	// Dial checks that an instance is reachable [L1.connect]. The default dials TCP to
	// ConnectInfo.Addr(false), as the host would before speaking SSH.
	Dial func(ctx context.Context, info provider.ConnectInfo) error
	// Panic makes the launched plugin panic inside a call and returns that call's error
	// [L0.panic]. In process the kit injects the panic itself; for a binary the clause
	// is skipped unless this is set, since an arbitrary plugin cannot be made to panic.
	// g is the host's side of the plugin, which has every call, the optional ones too
	// (g.(provider.Heartbeater).Heartbeat(ctx, id)).
	Panic func(ctx context.Context, g provider.InstanceGroup) error

	// LogOutput receives the plugin's log lines. Default: discarded.
	LogOutput io.Writer

	noConfig bool // PluginConfig was not given
}

// Status is the outcome of one clause.
type Status string

// The outcomes of a clause.
const (
	Pass Status = "PASS"
	Fail Status = "FAIL"
	Skip Status = "SKIP"
)

// Clause is one checked rule of the contract.
type Clause struct {
	// ID is stable: tests, reports and the .proto's comments refer to it.
	ID string
	// Level is 0 (wire) or 1 (contract; creates instances).
	Level int
	// Summary says what the clause checks.
	Summary string
}

// Clauses lists every clause, in the order Check runs them.
var Clauses = []Clause{
	{"L0.handshake", 0, "the plugin starts, completes the go-plugin handshake and dispenses protocol version 1"},
	{"L0.version", 0, "`<binary> version --json` answers without the handshake: name, version, protocol versions (binary mode)"},
	{"L0.init.first", 0, "a call before Init is refused, not served"},
	{"L0.config.all-problems", 0, "a plugin_config with several problems fails Init with ErrInvalidConfig naming every problem"},
	{"L0.info", 0, "Init succeeds and returns sane provider info: an ID without spaces, MaxSize >= 0, named capabilities"},
	{"L0.unsupported", 0, "a plugin that does not implement Suspend and Resume (no suspend_resume capability) answers both with ErrNotSupported"},
	{"L0.not-found", 0, "ConnectInfo and Heartbeat (if implemented) of an unknown ID answer ErrNotFound"},
	{"L0.cancel", 0, "a call whose context is cancelled returns promptly with the context's error, in the host and in the plugin"},
	{"L0.panic", 0, "a panic in a call becomes that call's error and the plugin keeps serving"},
	{"L0.shutdown.idempotent", 0, "Shutdown answers OK, and again OK when called a second time"},
	{"L1.increase", 1, "Increase(n) yields exactly n new instances that reach running, with unique IDs that stay the same"},
	{"L1.connect", 1, "ConnectInfo of each running instance names it and its address is dialable"},
	{"L1.heartbeat", 1, "Heartbeat of each running instance answers OK (skipped for a plugin without Heartbeat)"},
	{"L1.decrease.subset", 1, "Decrease of one instance removes it and leaves every other instance running"},
	{"L1.decrease.unknown", 1, "Decrease of an unknown ID answers ErrNotFound and harms nothing; an empty Decrease succeeds"},
	{"L1.relaunch", 1, "after the plugin is killed and launched again, it has the same ID and lists the same instances"},
	{"L1.max-size", 1, "Increase never goes beyond MaxSize: it accepts only what fits and says ErrCapacity for the rest"},
	{"L1.cleanup", 1, "everything the kit created is deleted, and Update finally lists none of it"},
}

// Result is the outcome of one clause.
type Result struct {
	Clause  string        `json:"clause"`
	Status  Status        `json:"status"`
	Detail  string        `json:"detail,omitempty"`
	Elapsed time.Duration `json:"elapsed_ns"`
}

// Report is the outcome of a Check, one Result per clause in the order of Clauses.
type Report struct {
	// Mode is "in-process" or "binary"; Target names the binary in binary mode.
	Mode   string `json:"mode"`
	Target string `json:"target,omitempty"`
	// Generation is the generation of GitLab's fleeting provider interface the plugin
	// implements: 1 (Init, Update, Increase, Decrease, ConnectInfo, Shutdown), 2 (and
	// Heartbeat) or 3 (and Suspend and Resume); 0 when it could not be found out (the
	// plugin was not initialised). Clauses of optional methods the plugin does not
	// implement are skipped, not failed.
	Generation int `json:"generation"`
	// Optional lists the optional methods the plugin implements: "Heartbeat",
	// "Suspend/Resume".
	Optional []string `json:"optional,omitempty"`
	Results  []Result `json:"results"`
}

// generation derives Report.Generation and Report.Optional from what the plugin was
// found to implement (nil: unknown).
func generation(implements map[provider.Capability]bool) (int, []string) {
	if implements == nil {
		return 0, nil
	}
	hb, sr := implements[provider.CapabilityHeartbeat], implements[provider.CapabilitySuspendResume]
	var optional []string
	if hb {
		optional = append(optional, "Heartbeat")
	}
	if sr {
		optional = append(optional, "Suspend/Resume")
	}
	switch {
	case hb && sr:
		return 3, optional
	case hb:
		return 2, optional
	}
	// Suspend and Resume without Heartbeat is no generation of GitLab's; the first is
	// the one whose every method it has, and Optional says the rest.
	return 1, optional
}

// describeGeneration is the report's line about the plugin's interface.
func (r Report) describeGeneration() string {
	if r.Generation == 0 {
		return "unknown (the plugin was not initialised)"
	}
	optional := "no optional methods"
	if len(r.Optional) > 0 {
		optional = "optional methods: " + strings.Join(r.Optional, ", ")
	}
	return fmt.Sprintf("fleeting generation %d (%s)", r.Generation, optional)
}

// Failed returns the IDs of the clauses that failed.
func (r Report) Failed() []string {
	var ids []string
	for _, res := range r.Results {
		if res.Status == Fail {
			ids = append(ids, res.Clause)
		}
	}
	return ids
}

// OK reports whether no clause failed.
func (r Report) OK() bool { return len(r.Failed()) == 0 }

// Result returns the result of one clause.
func (r Report) Result(id string) (Result, bool) {
	i := slices.IndexFunc(r.Results, func(res Result) bool { return res.Clause == id })
	if i < 0 {
		return Result{}, false
	}
	return r.Results[i], true
}

// WriteText writes the report for people: one line per clause, details indented
// below it, and a summary line.
func (r Report) WriteText(w io.Writer) error {
	var b strings.Builder
	target := r.Mode
	if r.Target != "" {
		target += " " + r.Target
	}
	fmt.Fprintf(&b, "conformance check of %s\n", target)
	fmt.Fprintf(&b, "plugin interface: %s\n", r.describeGeneration())
	counts := map[Status]int{}
	for _, res := range r.Results {
		counts[res.Status]++
		fmt.Fprintf(&b, "%-4s %-24s %s\n", res.Status, res.Clause, summary(res.Clause))
		if res.Detail != "" {
			for _, line := range strings.Split(strings.TrimRight(res.Detail, "\n"), "\n") {
				fmt.Fprintf(&b, "     %s\n", line)
			}
		}
	}
	fmt.Fprintf(&b, "%d passed, %d failed, %d skipped\n", counts[Pass], counts[Fail], counts[Skip])
	_, err := io.WriteString(w, b.String())
	return err
}

// Lookup returns the clause with the given ID.
func Lookup(id string) (Clause, bool) {
	for _, c := range Clauses {
		if c.ID == id {
			return c, true
		}
	}
	return Clause{}, false
}

func summary(id string) string {
	c, _ := Lookup(id)
	return c.Summary
}

func (cfg *Config) defaults() error {
	switch {
	case cfg.New == nil && cfg.Binary == "":
		return errors.New("conformance: set Config.New (in process) or Config.Binary (a built plugin)")
	case cfg.New != nil && cfg.Binary != "":
		return errors.New("conformance: set only one of Config.New and Config.Binary")
	}
	if len(cfg.PluginConfig) == 0 {
		cfg.PluginConfig, cfg.noConfig = json.RawMessage(`{}`), true
	}
	if len(cfg.BadConfig) == 0 {
		cfg.BadConfig = json.RawMessage(`{"flotilla_conformance_unknown_a": 1, "flotilla_conformance_unknown_b": "x"}`)
		cfg.BadConfigWant = []string{"flotilla_conformance_unknown_a", "flotilla_conformance_unknown_b"}
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Minute
	}
	if cfg.Prompt <= 0 {
		cfg.Prompt = 2 * time.Second
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 100 * time.Millisecond
	}
	if cfg.Dial == nil {
		cfg.Dial = dialTCP
	}
	return nil
}

// Check runs every clause against the plugin cfg names and returns the report. The
// error is for a Config that cannot be used; a misbehaving plugin gives failed clauses.
// Instances created by L1 are deleted before Check returns, even when ctx is cancelled.
func Check(ctx context.Context, cfg Config) (Report, error) {
	if err := cfg.defaults(); err != nil {
		return Report{}, err
	}
	c := &checker{cfg: cfg, results: map[string]Result{}}
	rep := Report{Mode: "in-process"}
	if cfg.Binary != "" {
		rep.Mode, rep.Target = "binary", cfg.Binary
	}
	c.runL0(ctx)
	c.runL1(ctx)
	rep.Generation, rep.Optional = generation(c.implements)
	for _, cl := range Clauses {
		res, ok := c.results[cl.ID]
		if !ok {
			res = Result{Clause: cl.ID, Status: Skip, Detail: "not run"}
		}
		rep.Results = append(rep.Results, res)
	}
	return rep, nil
}
