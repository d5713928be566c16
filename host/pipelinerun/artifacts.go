package pipelinerun

import (
	"archive/tar"
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	pathpkg "path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/flotilla-ci/flotilla/host/jobs"
)

// ArtifactsDir is where a run keeps its jobs' artifacts, under LogDir:
// <job>.tar.gz for a job's archive (what later jobs get), <job>/reports/<type>/ for
// its reports, as files.
const ArtifactsDir = "artifacts"

// maxDotenvVariables is GitLab's limit on the variables of one dotenv report.
const maxDotenvVariables = 20

// jobArtifacts is the executors.ArtifactStore of one attempt of a job: it writes the
// archive and the reports into the run's directory and reads the dotenv report's
// variables for the later jobs.
type jobArtifacts struct {
	dir, name string // the run's artifacts directory and the job's file name

	mu      sync.Mutex
	archive string
	reports []string
	dotenv  jobs.Variables
}

func (s *jobArtifacts) Store(_ context.Context, a jobs.Artifact, archive io.Reader, log io.Writer) error {
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return err
	}
	if !a.IsReport() {
		path := filepath.Join(s.dir, s.name+".tar.gz")
		tmp, err := os.CreateTemp(s.dir, ".save-*")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		_, err = io.Copy(tmp, archive)
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			// Renamed into place: a later job never reads half an archive.
			err = os.Rename(tmp.Name(), path)
		}
		if err != nil {
			return fmt.Errorf("save artifacts: %w", err)
		}
		s.mu.Lock()
		s.archive = path
		s.mu.Unlock()
		fmt.Fprintf(log, "Saved artifacts to %s\n", path)
		return nil
	}
	dir := filepath.Join(s.dir, s.name, "reports", a.Type)
	files, err := extract(archive, dir)
	if err != nil {
		return fmt.Errorf("save %s report: %w", a.Type, err)
	}
	var vars jobs.Variables
	if a.Type == "dotenv" {
		for _, f := range files {
			v, err := readDotenv(f)
			if err != nil {
				return err
			}
			vars = append(vars, v...)
		}
		if len(vars) > maxDotenvVariables {
			return fmt.Errorf("dotenv report: %d variables, more than GitLab's limit of %d", len(vars), maxDotenvVariables)
		}
		fmt.Fprintf(log, "dotenv report: %d variables for the jobs that get this job's artifacts\n", len(vars))
	}
	s.mu.Lock()
	s.reports = append(s.reports, files...)
	s.dotenv = append(s.dotenv, vars...)
	s.mu.Unlock()
	fmt.Fprintf(log, "Saved %s report to %s (%d files)\n", a.Type, dir, len(files))
	return nil
}

// extract writes the regular files of a gzip tar under dir and returns their paths.
func extract(r io.Reader, dir string) ([]string, error) {
	var out []string
	err := jobs.EachArchiveFile(r, func(h *tar.Header, content io.Reader) error {
		// Cleaned from the root: no name leads out of dir.
		path := filepath.Join(dir, filepath.FromSlash(pathpkg.Clean("/"+h.Name)))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		f, err := os.Create(path)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, content)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		out = append(out, path)
		return nil
	})
	return out, err
}

var dotenvKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// readDotenv reads a dotenv report as GitLab does: KEY=VALUE lines, the value as
// written (no quote removal, no expansion); empty lines and # comments are skipped.
func readDotenv(path string) (jobs.Variables, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out jobs.Variables
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !dotenvKey.MatchString(k) {
			return nil, fmt.Errorf("dotenv report %s line %d: want KEY=VALUE, got %q", filepath.Base(path), n, line)
		}
		out = append(out, jobs.Variable{Key: k, Value: v})
	}
	return out, sc.Err()
}

// dependencies returns what a job gets from the jobs in sources that ended before it:
// each one's archive, opened from the run's directory, and its dotenv variables.
func dependencies(sources []string, results map[string]*JobResult) ([]jobs.Dependency, jobs.Variables) {
	var deps []jobs.Dependency
	var vars jobs.Variables
	for _, name := range sources {
		res := results[name]
		if res == nil {
			continue
		}
		vars = append(vars, res.dotenv...)
		if res.Artifacts == "" {
			continue
		}
		path := res.Artifacts
		deps = append(deps, jobs.Dependency{ID: res.id, Name: name, Open: func(context.Context) (io.ReadCloser, error) {
			f, err := os.Open(path)
			if os.IsNotExist(err) {
				return nil, fmt.Errorf("%w: %v", jobs.ErrMissingDependency, err)
			}
			return f, err
		}})
	}
	return deps, vars
}
