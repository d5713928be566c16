// Command fakecloud runs a simulated AWS account as a process, for tests outside
// plugins/ that cannot import cloudsim (it is internal to plugins/): several `runner run`
// managers using the aws plugin binary can then share one simulated Auto Scaling group.
//
//	fakecloud -dir DIR [-group NAME] [-max N] [-listen 127.0.0.1:0]
//
// It starts a cloudsim cloud whose VMs are real SSH servers on 127.0.0.1, creates the
// group (scale-in protection on, as awsfake.DefaultGroup), serves the AWS wire fake,
// writes the AWS config and credentials files and the VMs' client key into DIR, and then
// prints one line of JSON to stdout:
//
//	{"plugin_config": {...}, "client_key_file": "DIR/client-key", "control": "http://127.0.0.1:PORT"}
//
// plugin_config is the aws plugin's configuration for the group. The VMs accept the
// client key for any user, and keys pushed with EC2 Instance Connect, so a connector
// configuration of username "ec2-user" with use_static_credentials = false works, and
// so does key_path = client_key_file with use_static_credentials = true.
//
// The control address serves what the test treats as the truth:
//
//	GET /vms    every VM ever created: [{"id", "group", "state", "live", "ssh_addr", "ssh_host_key", "reason"}]
//	GET /check  200, or 500 with the accounting violations (cloudsim.Cloud.Check)
//	GET /group  {"name", "min", "max", "desired", "size"}; size counts live VMs
//
// It runs until SIGTERM or SIGINT, then stops every VM's SSH server (killing the
// commands running on them), waits for those commands to end, and exits 0. A test
// should also set Pdeathsig, so that a test binary that dies takes fakecloud with it.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flotilla-ci/flotilla/plugins/internal/cloudsim/awsfake"
)

// Ready is the line fakecloud prints once it serves.
type Ready struct {
	PluginConfig  json.RawMessage `json:"plugin_config"`
	ClientKeyFile string          `json:"client_key_file"`
	Control       string          `json:"control"`
}

// VM is one entry of GET /vms.
type VM struct {
	ID      string `json:"id"`
	Group   string `json:"group"`
	State   string `json:"state"`
	Live    bool   `json:"live"`
	SSHAddr string `json:"ssh_addr,omitempty"` // host:port while running
	HostKey string `json:"ssh_host_key,omitempty"`
	Reason  string `json:"reason,omitempty"` // who terminated it
}

// Group is the answer to GET /group.
type Group struct {
	Name    string `json:"name"`
	Min     int    `json:"min"`
	Max     int    `json:"max"`
	Desired int    `json:"desired"`
	Size    int    `json:"size"`
}

// childrenGrace bounds the wait for the VMs' commands after their servers stop.
const childrenGrace = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	var usage usageError
	if errors.As(err, &usage) {
		fmt.Fprintf(os.Stderr, "fakecloud: %v\n", err)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "fakecloud: %v\n", err)
		os.Exit(1)
	}
}

type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("fakecloud", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory for the AWS config and credentials files, the client key and the VMs' working directories (required)")
	group := fs.String("group", awsfake.DefaultGroup.Name, "name of the Auto Scaling group")
	maxSize := fs.Int("max", awsfake.DefaultGroup.Max, "the group's MaxSize")
	listen := fs.String("listen", "127.0.0.1:0", "address of the control API")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	var errs []error
	if *dir == "" {
		errs = append(errs, errors.New("-dir is required: a directory for the credentials files, the client key and the VMs"))
	}
	if *group == "" {
		errs = append(errs, errors.New("-group is empty: give the Auto Scaling group a name"))
	}
	if *maxSize < 1 {
		errs = append(errs, fmt.Errorf("-max %d: the group needs a MaxSize of at least 1", *maxSize))
	}
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected arguments %q: fakecloud takes flags only", fs.Args()))
	}
	if len(errs) > 0 {
		return usageError{errors.Join(errs...)}
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return fmt.Errorf("-dir %s: %w", *dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return fmt.Errorf("-dir: %w", err)
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("-listen %s: %w", *listen, err)
	}
	g := awsfake.DefaultGroup
	g.Name, g.Max = *group, *maxSize
	env, err := awsfake.NewEnv(abs, awsfake.EnvOptions{SSH: true, Group: g})
	if err != nil {
		ln.Close()
		return fmt.Errorf("start the fake AWS: %w", err)
	}
	keyFile := filepath.Join(abs, "client-key")
	if err := os.WriteFile(keyFile, env.ClientKey, 0o600); err != nil {
		ln.Close()
		_ = env.Close()
		return fmt.Errorf("write the client key: %w", err)
	}

	srv := &http.Server{Handler: control(env), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	line, err := json.Marshal(Ready{PluginConfig: env.PluginConfig, ClientKeyFile: keyFile, Control: "http://" + ln.Addr().String()})
	if err == nil {
		_, err = fmt.Fprintf(stdout, "%s\n", line)
	}
	if err != nil {
		err = fmt.Errorf("write the ready line: %w", err)
	}

	if err == nil {
		select {
		case <-ctx.Done():
		case err = <-served:
			err = fmt.Errorf("control API: %w", err)
		}
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	if cerr := env.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("stop the VMs: %w", cerr))
	}
	if left := waitChildren(childrenGrace); len(left) > 0 {
		fmt.Fprintf(stderr, "fakecloud: commands still running on stopped VMs after %s: pids %v\n", childrenGrace, left)
	}
	return err
}

// control serves the test's view of the cloud.
func control(env *awsfake.Env) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /vms", func(w http.ResponseWriter, r *http.Request) {
		all := env.Cloud.AllVMs()
		out := make([]VM, 0, len(all))
		for _, v := range all {
			vm := VM{ID: v.ID, Group: v.Group, State: string(v.State), Live: v.State.Live(), Reason: v.TermReason}
			if v.Endpoint.Host != "" {
				vm.SSHAddr, vm.HostKey = v.Endpoint.Addr(), v.Endpoint.HostKey
			}
			out = append(out, vm)
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("GET /check", func(w http.ResponseWriter, r *http.Request) {
		if err := env.Cloud.Check(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /group", func(w http.ResponseWriter, r *http.Request) {
		g, err := env.Cloud.GetGroup(env.Group)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		vms, err := env.Cloud.VMs(env.Group)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, Group{Name: g.Name, Min: g.Min, Max: g.Max, Desired: g.Desired, Size: len(vms)})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// waitChildren waits until this process has no child processes left, at most grace,
// and returns the pids still there. The VMs' commands are our children, each in its own
// process group: when a VM's server stops, its sessions kill and reap them, but in the
// background, and exiting before they did would leave them running as orphans.
// Without /proc it cannot tell and returns at once.
func waitChildren(grace time.Duration) []int {
	deadline := time.Now().Add(grace)
	for {
		pids, ok := children()
		if !ok || len(pids) == 0 || time.Now().After(deadline) {
			return pids
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// children lists this process's children from /proc (every thread's children file,
// since a child belongs to the thread that forked it).
func children() ([]int, bool) {
	files, err := filepath.Glob("/proc/self/task/*/children")
	if err != nil || len(files) == 0 {
		return nil, false
	}
	var pids []int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the thread ended
		}
		for _, s := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(s); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids, true
}
