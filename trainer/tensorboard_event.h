// TensorBoard's Event protobuf (tensorflow/core/util/event.proto, summary.proto, tensor.proto),
// encoded by hand: qtrain writes three kinds of event and reads back two fields, so a protobuf
// dependency and generated code would be more than the messages themselves. Field numbers:
//   Event          wall_time 1 (double) · step 2 (int64) · file_version 3 (string) · summary 5
//   Summary        value 1 (repeated)
//   Summary.Value  tag 1 · simple_value 2 (float) · tensor 8 · metadata 9
//   SummaryMetadata plugin_data 1 · data_class 4 (enum; 2 = tensor)
//   PluginData     plugin_name 1 · content 2
//   TensorProto    dtype 1 (enum; 7 = DT_STRING) · tensor_shape 2 (empty: a scalar) · string_val 8
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace qtrain {

// The first record of every event file: file_version "brain.Event:2".
std::string file_version_event(double wall_time);

// A scalar summary (Summary.Value.simple_value): what TensorBoard's scalar dashboard plots.
std::string scalar_event(double wall_time, int64_t step, std::string_view tag, float value);

// A text summary: a scalar DT_STRING tensor for the "text" plugin, which renders it as Markdown.
std::string text_event(double wall_time, int64_t step, std::string_view tag, std::string_view markdown);

// What a resumed run needs to know about an event it finds on disk.
struct EventInfo {
  double wall_time = 0;
  int64_t step = 0;
  bool file_version = false;          // the file's header event
  std::vector<std::string> tags;      // of its summary values
  bool scalars_only = true;           // every summary value is a simple_value
};

// Parses the fields above and skips any other; throws std::runtime_error for bytes that are not a
// protobuf message (a truncated varint or field, a wire type protobuf does not have).
EventInfo decode_event(std::string_view bytes);

}  // namespace qtrain
