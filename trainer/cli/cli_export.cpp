// qtrain export: being built in this session (issue 10).
#include "data/error.h"
#include "trainer/cli/cli.h"

namespace qtrain::cli {

int run_export(const std::vector<std::string>&) { throw UsageError("qtrain export is not built yet"); }

}  // namespace qtrain::cli
