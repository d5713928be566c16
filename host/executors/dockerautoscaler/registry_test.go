package dockerautoscaler

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/moby/api/pkg/authconfig"
	"github.com/moby/moby/api/types/registry"
	"github.com/moby/moby/client"

	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/executors/dockertest"
	"github.com/flotilla-ci/flotilla/host/internal/credhelpertest"
	"github.com/flotilla-ci/flotilla/host/internal/registrytest"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// pushToRegistry gives the test image the name <registry>/<repo>, pushes it to the
// real registry through the real Docker Engine with the registry's credentials, and
// removes that name again, so a job gets the image by that name only by pulling it.
// It returns the name.
func pushToRegistry(t *testing.T, local *client.Client, reg *registrytest.Registry, repo string) string {
	t.Helper()
	ctx := context.Background()
	name := reg.Addr + "/" + repo
	if _, err := local.ImageTag(ctx, client.ImageTagOptions{Source: dockertest.Image, Target: name}); err != nil {
		t.Fatal(err)
	}
	auth, err := authconfig.Encode(registry.AuthConfig{Username: reg.User, Password: reg.Password, ServerAddress: reg.Addr})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := local.ImagePush(ctx, name, client.ImagePushOptions{RegistryAuth: auth})
	if err == nil {
		err = resp.Wait(ctx)
		resp.Close()
	}
	if err != nil {
		t.Fatalf("push %s: %v", name, err)
	}
	removeImage(t, local, name)
	return name
}

// removeImage removes a name from the local engine now and when the test ends.
func removeImage(t *testing.T, local *client.Client, name string) {
	t.Helper()
	rm := func() { local.ImageRemove(context.Background(), name, client.ImageRemoveOptions{}) }
	rm()
	t.Cleanup(rm)
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// authJSON is a Docker config whose auths hold user:password for the registry key.
func authJSON(key, user, password string) string {
	return `{"auths": {"` + key + `": {"auth": "` + b64(user+":"+password) + `"}}}`
}

// isolateDockerConfig points the runner host's Docker config at an empty directory and
// clears the runner's DOCKER_AUTH_CONFIG, so only what a case sets gives credentials.
// It returns the config file's path.
func isolateDockerConfig(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("DOCKER_CONFIG", dir)
	t.Setenv("DOCKER_AUTH_CONFIG", "")
	return filepath.Join(dir, "config.json")
}

// assertNoSecrets fails the test when the log holds any form of the credentials.
func assertNoSecrets(t *testing.T, log string, secrets ...string) {
	t.Helper()
	for _, s := range append(secrets, credhelpertest.StderrMarker) {
		if strings.Contains(log, s) {
			t.Errorf("the job log contains %q:\n%s", s, log)
		}
	}
}

// TestPrivateRegistryPulls: the job's image and a service image are pulled from a real
// registry behind htpasswd auth, with credentials from each place GitLab Runner reads
// them, and the log names the place but never the credentials; wrong or no
// credentials fail the job as image_pull_failure naming the registry.
func TestPrivateRegistryPulls(t *testing.T) {
	local, cli := dockerOverTunnel(t)
	reg := registrytest.Start(t)
	img := pushToRegistry(t, local, reg, "flotillatest/private:1")
	helper := credhelpertest.Install(t, "flotillatest", map[string]credhelpertest.Cred{
		reg.Addr: {Username: reg.User, Secret: reg.Password},
	})
	good := authJSON(reg.Addr, reg.User, reg.Password)
	secrets := []string{reg.Password, b64(reg.User + ":" + reg.Password), b64(reg.User + ":wrong-pass-123"), "wrong-pass-123"}

	tests := []struct {
		name      string
		jobVar    string // DOCKER_AUTH_CONFIG among the job's variables
		runnerEnv string // DOCKER_AUTH_CONFIG in the runner's environment
		file      string // the runner host's Docker config file
		from      string // the source the log must name; "" for a failed pull
		asked     bool   // the helper must have been asked for the registry
		wantLog   []string
	}{
		{name: "job variable", jobVar: good, from: "DOCKER_AUTH_CONFIG (job variable)"},
		{name: "runner environment, URL key", runnerEnv: authJSON("http://"+reg.Addr+"/v2/", reg.User, reg.Password),
			from: "DOCKER_AUTH_CONFIG (runner environment)"},
		{name: "job variable before the runner's", jobVar: good, runnerEnv: authJSON(reg.Addr, reg.User, "wrong-pass-123"),
			from: "DOCKER_AUTH_CONFIG (job variable)"},
		{name: "credHelpers in the Docker config", file: `{"credHelpers": {"` + reg.Addr + `": "flotillatest"}}`,
			from: "credential helper docker-credential-flotillatest (credHelpers of ", asked: true},
		{name: "credsStore in the Docker config", file: `{"credsStore": "flotillatest", "auths": {"` + reg.Addr + `": {}}}`,
			from: "credential helper docker-credential-flotillatest (credsStore of ", asked: true},
		{name: "failing helper: pulled without credentials", file: `{"credsStore": "missing-helper"}`,
			wantLog: []string{"docker-credential-missing-helper is not on the runner's PATH", reg.Addr}},
		{name: "wrong password", jobVar: authJSON(reg.Addr, reg.User, "wrong-pass-123"),
			wantLog: []string{"Authenticating with credentials from DOCKER_AUTH_CONFIG (job variable) for " + reg.Addr,
				"with the credentials for " + reg.Addr + " from DOCKER_AUTH_CONFIG (job variable)"}},
		{name: "no credentials", wantLog: []string{"pull " + img, reg.Addr}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := isolateDockerConfig(t)
			if tt.file != "" {
				os.WriteFile(file, []byte(tt.file), 0o600)
			}
			t.Setenv("DOCKER_AUTH_CONFIG", tt.runnerEnv)
			removeImage(t, local, img)
			asked := len(helper.Asked(t))
			job := jobs.Job{ID: "registry-" + string(rune('a'+i)), Image: jobs.Image{Name: img}, Script: []string{"echo pulled and ran"},
				Services: []jobs.Image{{Name: img, Alias: "svc", Command: []string{"sleep", "60"}}},
				Source:   jobs.Source{Kind: jobs.SourceLocal, Dir: t.TempDir()}}
			if tt.jobVar != "" {
				job.Variables = jobs.Variables{{Key: "DOCKER_AUTH_CONFIG", Value: tt.jobVar}}
			}
			res, log := runJob(t, cli, &job, Options{PullPolicy: []string{PullAlways}}, executors.RunOptions{Executor: "docker-autoscaler"})
			assertNoSecrets(t, log, secrets...)
			if tt.from != "" {
				if res.Status != executors.StatusSuccess || !strings.Contains(log, "pulled and ran") {
					t.Fatalf("result %+v\n%s", res, log)
				}
				// Once for the job's image and once for the service's.
				if n := strings.Count(log, "Authenticating with credentials from "+tt.from); n != 2 {
					t.Errorf("log names %q %d times, want 2:\n%s", tt.from, n, log)
				}
			} else if res.Status != executors.StatusFailed || res.FailureReason != executors.ImagePullFailure || res.SystemFailure() {
				t.Fatalf("result %+v, want image_pull_failure\n%s", res, log)
			}
			for _, w := range tt.wantLog {
				if !strings.Contains(log, w) {
					t.Errorf("log lacks %q:\n%s", w, log)
				}
			}
			if got := helper.Asked(t)[asked:]; tt.asked != slices.Contains(got, reg.Addr) {
				t.Errorf("helper asked for %q (want asked: %v)", got, tt.asked)
			}
			assertNothingLeft(t, local, job.ID)
		})
	}
}

// TestRegistryMirrors: a Docker Hub image name is pulled from the registry mirror
// (a real registry, with credentials for it) as <mirror>/<repository>, official images
// under library/, and runs under its own name; an image the mirror lacks falls back to
// Docker Hub, which cannot be reached here, and the error says both.
func TestRegistryMirrors(t *testing.T) {
	local, cli := dockerOverTunnel(t)
	reg := registrytest.Start(t)
	pushToRegistry(t, local, reg, "flotillatest/busybox:1")
	pushToRegistry(t, local, reg, "library/flotillatest-official:1")
	isolateDockerConfig(t)
	creds := jobs.Variables{{Key: "DOCKER_AUTH_CONFIG", Value: authJSON(reg.Addr, reg.User, reg.Password)}}
	mirrors := []string{"http://" + reg.Addr}

	tests := []struct {
		name, image string
		onMirror    string // the name it has on the mirror
		mirrors     []string
		ok          bool
		wantLog     []string
	}{
		{"user image", "flotillatest/busybox:1", "flotillatest/busybox:1", mirrors, true, []string{
			"Pulling image flotillatest/busybox:1 from registry mirror " + reg.Addr,
			"Authenticating with credentials from DOCKER_AUTH_CONFIG (job variable) for " + reg.Addr,
			"Pulled flotillatest/busybox:1 from registry mirror " + reg.Addr}},
		{"official image", "flotillatest-official:1", "library/flotillatest-official:1", mirrors, true, []string{
			"Pulled flotillatest-official:1 from registry mirror " + reg.Addr}},
		{"a bad mirror first", "docker.io/flotillatest/busybox:1", "flotillatest/busybox:1", []string{"127.0.0.1:1", reg.Addr}, true, []string{
			"Registry mirror 127.0.0.1:1 did not serve docker.io/flotillatest/busybox:1",
			"Pulled docker.io/flotillatest/busybox:1 from registry mirror " + reg.Addr}},
		{"not on the mirror", "flotillatest/absent:1", "", mirrors, false, []string{
			"Registry mirror " + reg.Addr + " did not serve flotillatest/absent:1",
			"Pulling flotillatest/absent:1 from Docker Hub after its mirrors",
			"registry mirror " + reg.Addr + ": ", "Docker Hub: "}},
		{"without mirrors", "flotillatest/busybox:1", "", nil, false, []string{"pull flotillatest/busybox:1"}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			removeImage(t, local, tt.image)
			job := jobs.Job{ID: "mirror-" + string(rune('a'+i)), Image: jobs.Image{Name: tt.image}, Script: []string{"echo ran from the mirror"},
				Variables: creds, Source: jobs.Source{Kind: jobs.SourceLocal, Dir: t.TempDir()}}
			res, log := runJob(t, cli, &job, Options{PullPolicy: []string{PullAlways}, RegistryMirrors: tt.mirrors}, executors.RunOptions{})
			assertNoSecrets(t, log, reg.Password, b64(reg.User+":"+reg.Password))
			if tt.ok != (res.Status == executors.StatusSuccess) || !tt.ok && res.FailureReason != executors.ImagePullFailure {
				t.Fatalf("result %+v (want success %v)\n%s", res, tt.ok, log)
			}
			for _, w := range tt.wantLog {
				if !strings.Contains(log, w) {
					t.Errorf("log lacks %q:\n%s", w, log)
				}
			}
			if tt.ok {
				// The image has the name the job gave, not the mirror's.
				if _, err := local.ImageInspect(context.Background(), tt.image); err != nil {
					t.Errorf("%s not on the engine after the pull: %v", tt.image, err)
				}
				if _, err := local.ImageInspect(context.Background(), reg.Addr+"/"+tt.onMirror); err == nil {
					t.Errorf("the mirror's name was left on the engine")
				}
			}
			assertNothingLeft(t, local, job.ID)
		})
	}
}
