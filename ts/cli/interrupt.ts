/**
 * Ctrl-C. A command that can stop cleanly asks for `signal()`: the first SIGINT aborts it (training
 * then writes its checkpoint and the command exits 130 after saying how to resume), and a second
 * SIGINT exits at once. A command that asked for no signal exits at the first SIGINT.
 */
import { EXIT } from './exit'
import type { Progress } from './progress'

export class Interrupt {
  private controller?: AbortController
  private count = 0

  constructor(private readonly progress: Progress) {
    process.on('SIGINT', () => this.onSigint())
  }

  /** Aborted by the first Ctrl-C. */
  signal(): AbortSignal {
    this.controller ??= new AbortController()
    return this.controller.signal
  }

  get interrupted(): boolean {
    return this.count > 0
  }

  private onSigint(): void {
    this.count++
    if (this.count === 1 && this.controller && !this.controller.signal.aborted) {
      this.progress.log('interrupted: stopping cleanly (press Ctrl-C again to quit at once)')
      this.controller.abort()
      return
    }
    this.progress.stop()
    this.progress.log('interrupted')
    process.exit(EXIT.INTERRUPTED)
  }
}
