"""The node: the composition root (`node.Node`) and its parts, each a module: admission,
the answer path, HTTP routes and auth, the hosted-element runner, the elements' control
interface, the background loops, status. docs/ARCHITECTURE.md draws them."""
