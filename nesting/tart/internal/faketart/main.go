// Command faketart stands in for Tart's `tart` CLI in the tests of nesting/tart, on
// machines without a Mac. It implements the subcommands the tart backend runs, with
// Tart's arguments, output and exit codes, and keeps its VMs as directories:
//
//	tart clone SOURCE NAME               copy VM SOURCE to a new VM NAME
//	tart run --no-graphics NAME          run VM NAME until SIGINT/SIGTERM
//	tart ip [--wait SECONDS] NAME        print the running VM's IP address
//	tart stop NAME                       stop VM NAME (nothing if it is not running)
//	tart delete NAME...                  delete stopped VMs
//	tart list [--source local] [--format json|text] [-q]
//
// The contract with a test, all through the environment:
//
//	FAKETART_HOME      the state directory (required). VM NAME is the directory
//	                   $FAKETART_HOME/vms/<url.PathEscape(NAME)>: a test makes an image
//	                   by creating such a directory (OCI names such as
//	                   ghcr.io/org/image:tag are escaped the same way). A running VM has
//	                   a file "run.json" in it ({"pid": …, "ip": …}).
//	FAKETART_LOG       if set, every command line is appended to this file, one line
//	                   each: the arguments after "tart", joined by single spaces.
//	FAKETART_SSH_PORT  the TCP port (required by `run`) on which a running VM serves
//	                   SSH. Each running VM has its own loopback address, as each Tart
//	                   VM has its own IP: the first of 127.0.0.1, 127.0.0.2, … on which
//	                   the port is free. `tart ip` prints that address.
//
// A VM's SSH server accepts the user "admin" with the password "admin" (the convention
// of Tart's images) and runs exec requests with `/bin/sh -c`, with FAKETART_VM set to
// the VM's name, so a test can tell which VM it reached.
//
// A VM directory holding a file "fail-run" is a broken image: `tart run` of it (or of
// a clone of it) prints the file's content to stderr and exits 1 at once. One holding
// a file "no-ip" runs but never gets an IP address (`tart ip` finds none).
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// exitError is a failure with Tart's exit code: 2 for a VM that does not exist or is
// (not) running, 1 otherwise.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func fail(code int, format string, args ...any) error {
	return &exitError{code: code, msg: fmt.Sprintf(format, args...)}
}

func main() {
	args := os.Args[1:]
	if log := os.Getenv("FAKETART_LOG"); log != "" {
		if f, err := os.OpenFile(log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintln(f, strings.Join(args, " "))
			f.Close()
		}
	}
	err := run(args)
	if err == nil {
		return
	}
	fmt.Fprintln(os.Stderr, "Error:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		os.Exit(ee.code)
	}
	os.Exit(1)
}

func run(args []string) error {
	home := os.Getenv("FAKETART_HOME")
	if home == "" {
		return fail(1, "faketart: FAKETART_HOME is not set")
	}
	if len(args) == 0 {
		return fail(64, "faketart: no subcommand")
	}
	s := store{dir: filepath.Join(home, "vms")}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return err
	}
	cmd, rest := args[0], args[1:]
	flags, pos, err := parseFlags(rest)
	if err != nil {
		return err
	}
	switch cmd {
	case "clone":
		if len(pos) != 2 {
			return fail(64, "usage: tart clone <source-name> <new-name>")
		}
		return s.clone(pos[0], pos[1])
	case "run":
		if len(pos) != 1 {
			return fail(64, "usage: tart run [--no-graphics] <name>")
		}
		if _, ok := flags["no-graphics"]; !ok {
			return fail(1, "faketart: there is no display here; run with --no-graphics")
		}
		return s.run(pos[0])
	case "ip":
		if len(pos) != 1 {
			return fail(64, "usage: tart ip [--wait <wait>] <name>")
		}
		wait := 0
		if w, ok := flags["wait"]; ok {
			if wait, err = strconv.Atoi(w); err != nil || wait < 0 || wait > 65535 {
				return fail(64, "Error: The value '%s' is invalid for '--wait <wait>'", w)
			}
		}
		return s.ip(pos[0], time.Duration(wait)*time.Second)
	case "stop":
		if len(pos) != 1 {
			return fail(64, "usage: tart stop <name>")
		}
		return s.stop(pos[0])
	case "delete":
		if len(pos) == 0 {
			return fail(64, "usage: tart delete <name> ...")
		}
		for _, n := range pos {
			if err := s.delete(n); err != nil {
				return err
			}
		}
		return nil
	case "list":
		if src, ok := flags["source"]; ok && src != "local" && src != "oci" {
			return fail(64, "'%s' is not a valid <source>", src)
		}
		return s.list(flags)
	}
	return fail(64, "faketart: unknown subcommand %q", cmd)
}

// parseFlags splits args into --flags (with their values) and positional arguments.
func parseFlags(args []string) (map[string]string, []string, error) {
	valued := map[string]bool{"wait": true, "source": true, "format": true, "timeout": true}
	flags := map[string]string{}
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "-q" {
			a = "--quiet"
		}
		name, ok := strings.CutPrefix(a, "--")
		if !ok {
			pos = append(pos, a)
			continue
		}
		if n, v, ok := strings.Cut(name, "="); ok {
			flags[n] = v
			continue
		}
		if valued[name] {
			if i+1 >= len(args) {
				return nil, nil, fail(64, "Error: Missing value for '--%s'", name)
			}
			i++
			flags[name] = args[i]
			continue
		}
		flags[name] = ""
	}
	return flags, pos, nil
}

type store struct{ dir string }

func (s store) path(name string) string { return filepath.Join(s.dir, url.PathEscape(name)) }

func (s store) exists(name string) error {
	if _, err := os.Stat(s.path(name)); err != nil {
		return fail(2, "the specified VM %q does not exist", name)
	}
	return nil
}

// runState is a running VM's run.json.
type runState struct {
	PID int    `json:"pid"`
	IP  string `json:"ip"`
}

// running returns the VM's run state if its `tart run` process lives.
func (s store) running(name string) (runState, bool) {
	data, err := os.ReadFile(filepath.Join(s.path(name), "run.json"))
	if err != nil {
		return runState{}, false
	}
	var st runState
	if json.Unmarshal(data, &st) != nil || st.PID <= 0 {
		return runState{}, false
	}
	if err := syscall.Kill(st.PID, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return runState{}, false // it died without cleaning up (kill -9)
	}
	return st, true
}

func (s store) clone(src, dst string) error {
	if strings.Contains(dst, "/") {
		return fail(64, "<new-name> should be a local name")
	}
	if err := s.exists(src); err != nil {
		return err
	}
	if s.exists(dst) == nil {
		return fail(1, "VM %q already exists", dst)
	}
	// Like Tart, build the copy aside and move it into place, so that a failed clone
	// leaves nothing.
	tmp, err := os.MkdirTemp(s.dir, ".clone-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	entries, err := os.ReadDir(s.path(src))
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() || e.Name() == "run.json" {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.path(src), e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(tmp, e.Name()), data, 0o644); err != nil {
			return err
		}
	}
	return os.Rename(tmp, s.path(dst))
}

func (s store) run(name string) error {
	if err := s.exists(name); err != nil {
		return err
	}
	if _, ok := s.running(name); ok {
		return fail(2, "VM %q is already running", name)
	}
	if msg, err := os.ReadFile(filepath.Join(s.path(name), "fail-run")); err == nil {
		return fail(1, "%s", strings.TrimSpace(string(msg)))
	}
	port := os.Getenv("FAKETART_SSH_PORT")
	if port == "" {
		return fail(1, "faketart: FAKETART_SSH_PORT is not set")
	}
	var ln net.Listener
	var lastErr error
	for i := 1; i < 255 && ln == nil; i++ {
		ln, lastErr = net.Listen("tcp", net.JoinHostPort("127.0.0."+strconv.Itoa(i), port))
	}
	if ln == nil {
		return fail(1, "faketart: no loopback address has port %s free: %v", port, lastErr)
	}
	defer ln.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cfg, err := sshConfig()
	if err != nil {
		return err
	}
	go serveSSH(ln, cfg, name)
	ip := ln.Addr().(*net.TCPAddr).IP.String()
	if _, err := os.Stat(filepath.Join(s.path(name), "no-ip")); err == nil {
		ip = ""
	}
	st, _ := json.Marshal(runState{PID: os.Getpid(), IP: ip})
	statePath := filepath.Join(s.path(name), "run.json")
	if err := os.WriteFile(statePath+".tmp", st, 0o644); err != nil {
		return err
	}
	if err := os.Rename(statePath+".tmp", statePath); err != nil {
		return err
	}
	<-ctx.Done()
	return os.Remove(statePath)
}

func (s store) ip(name string, wait time.Duration) error {
	if err := s.exists(name); err != nil {
		return err
	}
	deadline := time.Now().Add(wait)
	for {
		if st, ok := s.running(name); ok && st.IP != "" {
			fmt.Println(st.IP)
			return nil
		}
		if time.Now().After(deadline) {
			return fail(1, "no IP address found, is your VM running?")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s store) stop(name string) error {
	if err := s.exists(name); err != nil {
		return err
	}
	st, ok := s.running(name)
	if !ok {
		return nil
	}
	_ = syscall.Kill(st.PID, syscall.SIGINT)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, ok := s.running(name); !ok {
			return nil
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(st.PID, syscall.SIGKILL)
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (s store) delete(name string) error {
	if err := s.exists(name); err != nil {
		return err
	}
	if _, ok := s.running(name); ok {
		return fail(1, "VM %q is running; stop it first", name)
	}
	return os.RemoveAll(s.path(name))
}

// listEntry has the fields of `tart list --format json`.
type listEntry struct {
	Source  string `json:"Source"`
	Name    string `json:"Name"`
	Disk    int    `json:"Disk"`
	Size    int    `json:"Size"`
	Running bool   `json:"Running"`
	State   string `json:"State"`
}

func (s store) list(flags map[string]string) error {
	var out []listEntry
	if src, ok := flags["source"]; !ok || src == "local" {
		entries, err := os.ReadDir(s.dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			name, err := url.PathUnescape(e.Name())
			if !e.IsDir() || strings.HasPrefix(e.Name(), ".") || err != nil || strings.Contains(name, "/") {
				continue // a clone in progress, or an OCI image (not "local")
			}
			_, running := s.running(name)
			state := "stopped"
			if running {
				state = "running"
			}
			out = append(out, listEntry{Source: "local", Name: name, Disk: 50, Size: 20, Running: running, State: state})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	if _, ok := flags["quiet"]; ok {
		for _, e := range out {
			fmt.Println(e.Name)
		}
		return nil
	}
	if flags["format"] == "json" {
		if out == nil {
			out = []listEntry{}
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	fmt.Println("Source\tName\tDisk\tSize\tState")
	for _, e := range out {
		fmt.Printf("%s\t%s\t%d\t%d\t%s\n", e.Source, e.Name, e.Disk, e.Size, e.State)
	}
	return nil
}

func sshConfig() (*ssh.ServerConfig, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.NewSignerFromKey(key)
	if err != nil {
		return nil, err
	}
	cfg := &ssh.ServerConfig{
		PasswordCallback: func(md ssh.ConnMetadata, pw []byte) (*ssh.Permissions, error) {
			if md.User() == "admin" && string(pw) == "admin" {
				return nil, nil
			}
			return nil, errors.New("wrong user or password")
		},
	}
	cfg.AddHostKey(signer)
	return cfg, nil
}

func serveSSH(ln net.Listener, cfg *ssh.ServerConfig, vm string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, chans, reqs, err := ssh.NewServerConn(c, cfg)
			if err != nil {
				return
			}
			go ssh.DiscardRequests(reqs)
			for nc := range chans {
				if nc.ChannelType() != "session" {
					_ = nc.Reject(ssh.UnknownChannelType, "only sessions")
					continue
				}
				ch, chReqs, err := nc.Accept()
				if err != nil {
					continue
				}
				go session(ch, chReqs, vm)
			}
		}()
	}
}

// session runs the first exec request of a session channel.
func session(ch ssh.Channel, reqs <-chan *ssh.Request, vm string) {
	defer ch.Close()
	for req := range reqs {
		if req.Type != "exec" || len(req.Payload) < 4 {
			_ = req.Reply(req.Type == "env", nil)
			continue
		}
		n := binary.BigEndian.Uint32(req.Payload)
		command := string(req.Payload[4:][:min(int(n), len(req.Payload)-4)])
		_ = req.Reply(true, nil)
		cmd := exec.Command("/bin/sh", "-c", command)
		cmd.Env = append(os.Environ(), "FAKETART_VM="+vm)
		cmd.Stdout, cmd.Stderr = ch, ch.Stderr()
		status := 0
		if err := cmd.Run(); err != nil {
			status = 1
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				status = ee.ExitCode()
			}
		}
		_, _ = ch.SendRequest("exit-status", false, binary.BigEndian.AppendUint32(nil, uint32(status)))
		return
	}
}
