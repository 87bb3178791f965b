// kstatus prints what sigs.k8s.io/cli-utils' kstatus library (the library Flux's
// kustomize-controller uses for health checks) computes for Kubernetes objects.
//
// Input on stdin: one JSON object, or a JSON list object (`kubectl get -o json`).
// Output on stdout: one JSON line per object: {"name": ..., "status": ..., "message": ...}.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func compute(u *unstructured.Unstructured) (verdict, error) {
	res, err := status.Compute(u)
	if err != nil {
		return verdict{}, fmt.Errorf("%s: %w", u.GetName(), err)
	}
	return verdict{Name: u.GetName(), Status: res.Status.String(), Message: res.Message}, nil
}

// decode reads one object or a list, with JSON numbers as int64 where integral (what the
// accessors of unstructured expect; encoding/json alone would give float64).
func decode(raw []byte) ([]*unstructured.Unstructured, error) {
	var probe map[string]interface{}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return nil, fmt.Errorf("stdin is not a JSON object: %w", err)
	}
	if _, isList := probe["items"]; isList {
		list := &unstructured.UnstructuredList{}
		if err := list.UnmarshalJSON(raw); err != nil {
			return nil, err
		}
		out := make([]*unstructured.Unstructured, 0, len(list.Items))
		for i := range list.Items {
			out = append(out, &list.Items[i])
		}
		return out, nil
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(raw); err != nil {
		return nil, err
	}
	return []*unstructured.Unstructured{u}, nil
}

func run() error {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		return err
	}
	objs, err := decode(raw)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	for _, o := range objs {
		v, err := compute(o)
		if err != nil {
			return err
		}
		if err := enc.Encode(v); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}
