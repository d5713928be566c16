package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Load reads and checks the config.toml at path. It returns the configuration only when
// the file has no errors; the diagnostics (warnings, and errors when err is an
// *InvalidError) are returned either way. Nothing is half-applied: on error the
// *Config is nil.
func Load(path string) (*Config, Diagnostics, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading config file: %w", err)
	}
	return Parse(path, data)
}

// Parse checks and decodes a config.toml held in memory; file names it in diagnostics
// and becomes Config.Path. See Load.
func Parse(file string, data []byte) (*Config, Diagnostics, error) {
	// go-toml's own decoder is the judge of TOML syntax and of duplicate or conflicting
	// keys; it reports the first such problem with its position.
	var generic map[string]any
	if err := toml.Unmarshal(data, &generic); err != nil {
		ds := Diagnostics{decodeDiagnostic(file, err)}
		return nil, ds, ds.Err()
	}
	root, err := buildTree(data)
	if err != nil {
		ds := Diagnostics{{Severity: Error, File: file, Message: "parsing TOML: " + err.Error()}}
		return nil, ds, ds.Err()
	}

	// Every unknown key and every wrongly typed value, with positions.
	c := &checker{file: file, where: map[string]pos{}}
	c.walk(root, generic, reflect.TypeOf(Config{}), "")
	clean, cleaned := data, false
	if len(c.diags) > 0 {
		// Decode what is left without the unknown keys and bad values: their neighbours
		// can still be checked, so every problem is reported in one run (a config with
		// errors is never returned), and an unknown key can never be matched to a field
		// behind the checker's back.
		b, err := toml.Marshal(generic)
		if err != nil {
			sortDiagnostics(c.diags)
			return nil, c.diags, c.diags.Err()
		}
		clean, cleaned = b, true
	}

	var cfg Config
	dec := toml.NewDecoder(bytes.NewReader(clean))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		var strict *toml.StrictMissingError
		if errors.As(err, &strict) {
			// The checker already warned about these; keep any it did not see.
			for i := range strict.Errors {
				d := decodeDiagnostic(file, &strict.Errors[i])
				if cleaned {
					continue // positions refer to the cleaned copy; the checker saw them all
				}
				if !c.reportedAt(d.Line, d.Column) {
					d.Severity = Warning
					d.Message = "unknown key is ignored"
					c.diags = append(c.diags, d)
				}
			}
		} else {
			c.diags = append(c.diags, decodeDiagnostic(file, err))
		}
	}
	cfg.Path = file

	v := &validator{checker: c, cfg: &cfg}
	v.validate()
	sortDiagnostics(c.diags)
	if c.diags.HasErrors() {
		return nil, c.diags, c.diags.Err()
	}
	return &cfg, c.diags, nil
}

func (c *checker) reportedAt(line, col int) bool {
	for _, d := range c.diags {
		if d.Line == line && d.Column == col {
			return true
		}
	}
	return false
}

func decodeDiagnostic(file string, err error) Diagnostic {
	d := Diagnostic{Severity: Error, File: file, Message: err.Error()}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		d.Line, d.Column = de.Position()
		d.Message = strings.TrimPrefix(de.Error(), "toml: ")
		d.Path = strings.Join(de.Key(), ".")
		switch {
		case strings.Contains(d.Message, "already defined"):
			d.Hint = "each key and table may be defined only once; remove or merge the duplicate"
		default:
			d.Hint = "fix the TOML syntax here (strings need quotes, tables need [brackets])"
		}
	}
	return d
}

func sortDiagnostics(ds Diagnostics) {
	sort.SliceStable(ds, func(i, j int) bool {
		if ds[i].Line != ds[j].Line {
			return ds[i].Line < ds[j].Line
		}
		return ds[i].Column < ds[j].Column
	})
}
